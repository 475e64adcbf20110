"""Stateful spiking operators: the IF neuron and the spiking max-pool, on one shared state protocol.

Every stateful operator is a :class:`StatefulModule`. The protocol is what the simulator and both ONNX
exporters rely on, so a new operator (bipolar or multi-bit neuron, spiking product, compensated softmax)
needs only these four methods:

- ``state_names``: names of its state tensors (one ONNX ``state.<module>.<name>`` input/output each);
- ``init_state(*xs)``: the initial state for one step's inputs ``xs`` (shape ``[B, ...]``);
- ``step(*xs, state=...)``: a pure function ``(y, new_state)`` for one time step;
- ``multi_step(*xs_seq)``: all steps at once on ``[T, B, ...]`` (defaults to scanning ``step``).

``forward`` is single-step with the state kept inside the module until ``reset()``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["StatefulModule", "IFNeuron", "SpikingMaxPool2d", "stateful_modules", "reset_states"]

State = tuple[torch.Tensor, ...]


class StatefulModule(nn.Module):
    """Base class of operators that carry state across time steps."""

    state_names: tuple[str, ...] = ()
    kind: str = "stateful"

    def __init__(self) -> None:
        super().__init__()
        self._state: State | None = None

    def init_state(self, *xs: torch.Tensor) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, *xs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # pragma: no cover
        raise NotImplementedError

    def multi_step(self, *xs_seq: torch.Tensor) -> torch.Tensor:
        """Run all time steps of ``[T, B, ...]`` inputs from the initial state; returns ``[T, B, ...]``."""
        state = self.init_state(*(x[0] for x in xs_seq))
        out = []
        for t in range(xs_seq[0].shape[0]):
            y, state = self.step(*(x[t] for x in xs_seq), state=state)
            out.append(y)
        return torch.stack(out)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """One time step; the state lives in the module until :meth:`reset`."""
        if self._state is None:
            self._state = self.init_state(*xs)
        y, self._state = self.step(*xs, state=self._state)
        return y

    def reset(self) -> None:
        self._state = None

    @property
    def state(self) -> State | None:
        return self._state


class IFNeuron(StatefulModule):
    """Integrate-and-fire neuron with soft reset, started at ``v0 = shift · threshold``.

    Per step: ``v += x; s = [v >= θ]; v -= s·θ``; the output is ``θ·s``. After the threshold-folding pass
    θ = 1, so spikes are binary and the comparison is against the constant 1.

    For constant input z and T = L steps, ``mean_t(θ·s_t) = QCFS(z)`` exactly (the conversion identity).

    Args:
        threshold: θ, a float or a tensor broadcastable to the input of one step.
        shift: φ; the membrane starts at φ·θ.
    """

    state_names = ("v",)
    kind = "if"

    def __init__(self, threshold: float | torch.Tensor = 1.0, *, shift: float = 0.5) -> None:
        super().__init__()
        theta = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if not bool(torch.all(theta > 0)):
            raise ValueError(f"IFNeuron threshold must be > 0, got min {float(theta.min())}")
        self.shift = float(shift)
        # A folded network has θ = 1 everywhere: compare against the constant, skip the multiplies.
        self.unit_threshold = bool(theta.numel() == 1 and float(theta) == 1.0)
        self.register_buffer("threshold", theta)

    def init_state(self, x: torch.Tensor) -> State:
        if self.unit_threshold:
            return (torch.full_like(x, self.shift),)
        return (torch.broadcast_to(self.shift * self.threshold.to(x), x.shape).clone(),)

    def step(self, x: torch.Tensor, *, state: State) -> tuple[torch.Tensor, State]:
        (v,) = state
        v = v + x
        if self.unit_threshold:
            s = (v >= 1.0).to(x.dtype)
            return s, (v - s,)
        theta = self.threshold.to(x)
        out = (v >= theta).to(x.dtype) * theta
        return out, (v - out,)

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        (v,) = self.init_state(x_seq[0])
        out = torch.empty_like(x_seq)
        for t in range(x_seq.shape[0]):
            out[t], (v,) = self.step(x_seq[t], state=(v,))
        return out

    def constant_input_counts(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Spike counts after t = 1..T steps of a constant input, in closed form: ``[T, B, ...]``.

        ``count_t = clamp(floor(t·x/θ + φ), 0, t)``. Equal to scanning :meth:`step` except where
        ``t·x/θ + φ`` lies within rounding error of an integer.
        """
        a = x if self.unit_threshold else x / self.threshold.to(x)
        t = torch.arange(1, T + 1, dtype=x.dtype, device=x.device).reshape([T] + [1] * x.dim())
        return torch.minimum(torch.clamp(torch.floor(t * a + self.shift), min=0.0), t)

    def extra_repr(self) -> str:
        th = "1" if self.unit_threshold else f"tensor{tuple(self.threshold.shape)}"
        return f"threshold={th}, shift={self.shift}"


class SpikingMaxPool2d(StatefulModule):
    """Max-pool on accumulated inputs: ``y_t = maxpool(C_t) − maxpool(C_{t−1})``, ``C_t = Σ_{τ≤t} x_τ``.

    Exact in the cumulative sense: ``Σ_t y_t = maxpool(Σ_t x_t)`` for every T. With binary spikes in,
    the output is binary too (each running count grows by at most one per step, so does their max).
    """

    state_names = ("count", "max")
    kind = "maxpool"

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode

    @classmethod
    def from_module(cls, m: nn.MaxPool2d) -> "SpikingMaxPool2d":
        if m.return_indices:
            raise ValueError("max-pool with return_indices cannot be converted")
        return cls(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def init_state(self, x: torch.Tensor) -> State:
        return torch.zeros_like(x), torch.zeros_like(self._pool(x))

    def step(self, x: torch.Tensor, *, state: State) -> tuple[torch.Tensor, State]:
        count, prev = state
        count = count + x
        m = self._pool(count)
        return m - prev, (count, m)

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        T = x_seq.shape[0]
        m = self._pool(torch.cumsum(x_seq, 0).flatten(0, 1)).unflatten(0, (T, -1))
        return torch.diff(m, dim=0, prepend=torch.zeros_like(m[:1]))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def stateful_modules(model: nn.Module) -> list[tuple[str, StatefulModule]]:
    """The stateful operators of ``model`` with their qualified names, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, StatefulModule)]


def reset_states(model: nn.Module) -> None:
    """Reset every stateful operator of ``model`` (call between independent inputs in single-step mode)."""
    for _, m in stateful_modules(model):
        m.reset()
