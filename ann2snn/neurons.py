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

__all__ = ["StatefulModule", "IFNeuron", "BipolarNeuron", "SpikingMaxPool2d", "Compensated", "neuron_for_qcfs",
           "stateful_modules", "reset_states", "MultiBitNeuron", "multibit_for_qcfs"]

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

    def tie_probe(self, factor: float) -> "StatefulModule | None":
        """A copy whose firing decisions move by ``factor`` (thresholds ×factor, the lower bound −(factor−1)·θ)
        while emitting the same values; None for operators that make no threshold decisions. Verification
        uses it to find samples whose outcome hangs on float rounding."""
        return None

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

    def tie_probe(self, factor: float) -> "IFNeuron":
        probe = _IFTieProbe(self.threshold, shift=self.shift)
        probe.factor = float(factor)
        return probe

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


class _IFTieProbe(IFNeuron):
    """An IF neuron that fires at ``factor·θ`` but emits and subtracts θ as usual: only its decisions move."""

    factor = 1.0

    def step(self, x: torch.Tensor, *, state: State) -> tuple[torch.Tensor, State]:
        (v,) = state
        v = v + x
        theta = 1.0 if self.unit_threshold else self.threshold.to(x)
        out = (v >= theta * self.factor).to(x.dtype) * theta
        return out, (v - out,)


class BipolarNeuron(StatefulModule):
    """Bounded bipolar integrate-and-fire neuron: +1 and −1 spikes, spike count kept in ``[n_min, n_max]``.

    Per step, with the membrane started at ``v0 = φ·θ``::

        v += x
        if v >= θ and n < n_max:   emit +1;  v -= θ;  n += 1
        elif v < 0 and n > n_min:  emit −1;  v += θ;  n -= 1

    A spike is worth ``θ`` while the count is on the positive side and ``θ_n`` (``neg_threshold``) on the
    negative side: the output is ``a(n_t) − a(n_{t−1})`` with ``a(n) = θ·n`` for ``n ≥ 0`` and ``θ_n·n`` for
    ``n < 0`` — the signed (double-threshold) quantizer rounds ``z/θ`` on both sides and scales its negative
    half by ``θ_n/θ``. With ``θ_n = θ`` spikes are ``±θ`` (``±1`` after threshold folding).

    Whenever the accumulated input ``S`` stops changing, the neuron settles on ``n = clip(floor(S/θ + φ), n_min,
    n_max)`` within ``n_max − n_min`` steps — the QCFS level when ``S = L·z`` (the exact time convention).
    IF is the special case with no bounds and no −1.

    Args:
        threshold: θ (decisions, and the value of a positive-side spike); float or tensor of one step's shape.
        neg_threshold: θ_n, the value of a negative-side spike (default θ).
        shift: φ; the membrane starts at φ·θ.
        n_min: lower bound of the count (None: unbounded).
        n_max: upper bound of the count (None: unbounded).
    """

    state_names = ("v", "n")
    kind = "bipolar"

    def __init__(self, threshold: float | torch.Tensor = 1.0, *, neg_threshold: float | torch.Tensor | None = None,
                 shift: float = 0.5, n_min: int | None = None, n_max: int | None = None) -> None:
        super().__init__()
        theta = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        neg = theta.clone() if neg_threshold is None else torch.as_tensor(neg_threshold, dtype=torch.float32)
        neg = neg.detach().clone()
        if not bool(torch.all(theta > 0)) or not bool(torch.all(neg > 0)):
            raise ValueError("BipolarNeuron thresholds must be > 0, got min "
                             f"{float(theta.min())} / {float(neg.min())}")
        if n_min is not None and n_max is not None and n_min > n_max:
            raise ValueError(f"BipolarNeuron needs n_min <= n_max, got {n_min} > {n_max}")
        self.shift = float(shift)
        self.n_min = None if n_min is None else int(n_min)
        self.n_max = None if n_max is None else int(n_max)
        self.symmetric = bool(torch.equal(torch.broadcast_to(neg, torch.broadcast_shapes(neg.shape, theta.shape)),
                                          torch.broadcast_to(theta, torch.broadcast_shapes(neg.shape, theta.shape))))
        self.register_buffer("threshold", theta)
        self.register_buffer("neg_threshold", neg)
        self.factor = 1.0  # decisions at factor·θ (and below −(factor−1)·θ): verification's tie probe only

    @property
    def signed(self) -> bool:
        """True when the count may go below zero (negative outputs)."""
        return self.n_min is None or self.n_min < 0

    def init_state(self, x: torch.Tensor) -> State:
        v = torch.broadcast_to(self.shift * self.threshold.to(x), x.shape).clone()
        return v, torch.zeros_like(x)

    def value(self, n: torch.Tensor) -> torch.Tensor:
        """``a(n)``: the accumulated output of a count ``n``."""
        theta = self.threshold.to(n)
        if not self.signed or self.symmetric:
            return n * theta
        return torch.where(n >= 0, n * theta, n * self.neg_threshold.to(n))

    def step(self, x: torch.Tensor, *, state: State) -> tuple[torch.Tensor, State]:
        v, n = state
        theta = self.threshold.to(x)
        v = v + x
        up = v >= theta * self.factor
        down = v < theta * (1.0 - self.factor)
        if self.n_max is not None:
            up = up & (n < self.n_max)
        if self.n_min is not None:
            down = down & (n > self.n_min)
        s = up.to(x.dtype) - (down & ~up).to(x.dtype)
        new_n = n + s
        v = v - s * theta
        if not self.signed or self.symmetric:
            return s * theta, (v, new_n)
        return self.value(new_n) - self.value(n), (v, new_n)

    def tie_probe(self, factor: float) -> "BipolarNeuron":
        probe = BipolarNeuron(self.threshold, neg_threshold=self.neg_threshold, shift=self.shift, n_min=self.n_min,
                              n_max=self.n_max)
        probe.factor = float(factor)
        return probe

    def extra_repr(self) -> str:
        def show(t):
            return f"{float(t):g}" if t.numel() == 1 else f"tensor{tuple(t.shape)}"

        neg = "" if self.symmetric else f", neg_threshold={show(self.neg_threshold)}"
        return f"threshold={show(self.threshold)}{neg}, shift={self.shift}, n_min={self.n_min}, n_max={self.n_max}"


def neuron_for_qcfs(q: nn.Module, theta: torch.Tensor, *, convention: str = "rate",
                    schedule_length: int | None = None, neg_theta: torch.Tensor | None = None) -> StatefulModule:
    """The spiking neuron that replaces the QCFS-family quantizer ``q`` under a time convention.

    ``theta`` (and ``neg_theta`` for a signed quantizer) are the thresholds broadcast to one step's shape
    (``1`` after threshold folding).

    - ``rate``: an unsigned QCFS becomes an :class:`IFNeuron`; a signed one a :class:`BipolarNeuron` without
      bounds (a double-threshold neuron);
    - ``exact``: a :class:`BipolarNeuron` with counts in ``[0, L]`` (unsigned) or ``[−L, L]`` (signed). With
      the schedule length ``L_s`` (the largest L of the network), a layer of ``L`` levels gets threshold
      ``θ·L_s/L``: its count over ``L_s`` injected steps then settles on its own QCFS level, so layers of
      different L mix exactly.
    """
    signed = bool(getattr(q, "signed", False))
    if convention == "rate":
        if not signed:
            return IFNeuron(theta, shift=q.shift)
        return BipolarNeuron(theta, neg_threshold=neg_theta, shift=q.shift)
    if convention != "exact":
        raise ValueError(f"convention must be 'rate' or 'exact', got {convention!r}")
    gain = (schedule_length or q.levels) / q.levels
    return BipolarNeuron(theta * gain, neg_threshold=None if neg_theta is None else neg_theta * gain, shift=q.shift,
                         n_min=-q.levels if signed else 0, n_max=q.levels)


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
        #: the same pooling with ``ceil_mode`` off, as ONNX pads ``[top, left, bottom, right]`` (set by
        #: :meth:`from_module` for a known input size; None: the symmetric ``padding``). ONNX's ceil_mode keeps a
        #: last window that starts in the padding where PyTorch drops it; explicit end pads give PyTorch's windows.
        self.end_pads: tuple[int, int] | None = None

    @classmethod
    def from_module(cls, m: nn.MaxPool2d, input_size: tuple[int, int] | None = None) -> "SpikingMaxPool2d":
        """The spiking form of ``m``; ``input_size`` (H, W) fixes :attr:`end_pads` of a ``ceil_mode`` pool."""
        if m.return_indices:
            raise ValueError("max-pool with return_indices cannot be converted")
        pool = cls(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        if m.ceil_mode and input_size is not None:
            out = pool._pool(torch.zeros(1, 1, *input_size)).shape[-2:]
            pool.end_pads = tuple(  # the last window ends at (o - 1)·s + d·(k − 1) + 1 − p
                (o - 1) * s + d * (k - 1) + 1 - i - p for o, i, k, s, p, d in zip(
                    out, input_size, *(_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding,
                                                          pool.dilation))))
        return pool

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


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _running_sum(x: torch.Tensor) -> torch.Tensor:
    """``cumsum`` over dim 0 as T in-place adds: 4× faster than ``torch.cumsum`` along the outer dim on CPU."""
    s = x.clone()
    for t in range(1, s.shape[0]):
        s[t] += s[t - 1]
    return s


class Compensated(StatefulModule):
    """The spiking form of a non-linear operator ``f`` on spiking values (DESIGN §2b): the product Q·Kᵀ and
    attn·V, softmax, LayerNorm, GELU.

    It keeps the running sum ``S_i`` of each input and emits ``O_t = tot_t − tot_{t−1}`` with
    ``tot_t = N(t)·f(S_1/N(t), S_2/N(t), …)``, so the value of its output stream after t steps,
    ``Σ O / N(t)``, is ``f`` of the values of its input streams — exactly, at every step, for any input, under
    both time conventions (``N(t) = t`` for rate, ``min(t, L)`` for exact). The operator adds no error of its
    own; only neurons do. Evaluating ``f`` on each step's message instead (MST-style) is off by 0.2–1.5.

    Args:
        op: the QANN module computing ``f`` (``nn.LayerNorm``, ``nn.Softmax``, ``nn.GELU``,
            :class:`~ann2snn.layers.MatMul`, :class:`~ann2snn.layers.Multiply`); kept as a submodule.
        n_inputs: how many value inputs ``f`` takes.
        convention: ``"rate"`` or ``"exact"``; ``length``: the exact schedule's L.

    State per input ``sum<i>``, plus ``total`` (``tot_{t−1}``) and ``steps`` (``t − 1``, one per sample, shaped
    ``[B, 1, …, 1]`` to broadcast against the values: every supported ``f`` keeps its inputs' rank).
    """

    kind = "compensated"

    def __init__(self, op: nn.Module, n_inputs: int, *, convention: str = "rate", length: int | None = None) -> None:
        super().__init__()
        if convention not in ("rate", "exact"):
            raise ValueError(f"convention must be 'rate' or 'exact', got {convention!r}")
        if convention == "exact" and (not isinstance(length, int) or length <= 0):
            raise ValueError(f"the exact convention needs a schedule length L >= 1, got {length!r}")
        self.op = op
        self.n_inputs = int(n_inputs)
        self.convention = convention
        self.length = int(length) if convention == "exact" else None
        self.state_names = (*(f"sum{i}" for i in range(self.n_inputs)), "total", "steps")

    def counted(self, steps: torch.Tensor) -> torch.Tensor:
        """``N(t)`` for step numbers ``t`` (any shape)."""
        return steps if self.length is None else steps.clamp(max=float(self.length))

    def init_state(self, *xs: torch.Tensor) -> State:
        with torch.no_grad():
            y = self.op(*xs)
        steps = xs[0].new_zeros(xs[0].shape[0], *([1] * (xs[0].dim() - 1)))  # broadcasts against inputs, output
        return (*(torch.zeros_like(x) for x in xs), torch.zeros_like(y), steps)

    def step(self, *xs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        sums = [s + x for s, x in zip(state[:self.n_inputs], xs)]
        prev, steps = state[self.n_inputs], state[self.n_inputs + 1] + 1
        n = self.counted(steps)
        tot = self.op(*(s / n for s in sums)) * n
        return tot - prev, (*sums, tot, steps)

    def multi_step(self, *xs_seq: torch.Tensor) -> torch.Tensor:
        T = xs_seq[0].shape[0]
        n = self.counted(torch.arange(1, T + 1, dtype=xs_seq[0].dtype, device=xs_seq[0].device))

        def per_step(like: torch.Tensor) -> torch.Tensor:
            return n.reshape(T, *([1] * (like.dim() - 1)))

        values = [(_running_sum(x) / per_step(x)).flatten(0, 1) for x in xs_seq]
        tot = self.op(*values).unflatten(0, (T, -1))
        tot = tot * per_step(tot)
        return torch.cat([tot[:1], tot[1:] - tot[:-1]])  # O_t = tot_t − tot_{t−1}

    def extra_repr(self) -> str:
        sched = "rate" if self.length is None else f"exact, L={self.length}"
        return f"inputs={self.n_inputs}, {sched}"


def stateful_modules(model: nn.Module) -> list[tuple[str, StatefulModule]]:
    """The stateful operators of ``model`` with their qualified names, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, StatefulModule)]


def reset_states(model: nn.Module) -> None:
    """Reset every stateful operator of ``model`` (call between independent inputs in single-step mode)."""
    for _, m in stateful_modules(model):
        m.reset()


class MultiBitNeuron(StatefulModule):
    """Integrate-and-fire neuron that may emit up to ``D`` spikes a step (multi-bit spikes), soft reset.

    Per step, with the membrane started at ``v0 = (φ + δ)·θ`` (``δ``: ``offset``, 0 unless calibrated)::

        v += x;  s = clip(floor(v/θ), 0, D);  v -= s·θ;  output s·θ

    ``floor(v/θ)`` with ``v0 = φ·θ`` is the seed's ``S = clip(round(U), 0, D)`` for φ = ½. For ``D = 1`` this is
    :class:`IFNeuron`. For a constant input ``x`` (``a = x/θ``) the count after t steps is
    ``clip(floor(t·a + φ), 0, D·t)``: the residual ``φ + (t−1)·a − count`` stays in ``[0, 1)``, so each step adds
    ``floor(residual + a) ≤ D`` while ``0 ≤ a ≤ D``. With ``θ = θ_q·⌈L/D⌉/L`` (:func:`multibit_for_qcfs`) the
    value after ``T_D = ⌈L/D⌉`` steps, ``θ·count/T_D``, is the QCFS level ``θ_q·clip(floor(z·L/θ_q + φ), 0, L)/L``.
    When D does not divide L, ``D·T_D > L`` would let a saturated neuron exceed θ_q, so the count is kept within
    a budget of ``levels`` spikes per ``period`` steps (``count_t ≤ levels·⌈t/period⌉``; a third state, the step).

    Args:
        threshold: θ, the value of one spike (float or a tensor of one step's shape).
        shift: φ.
        max_spikes: D ≥ 1.
        levels: the spike budget: at most ``levels`` spikes per ``period`` steps (with ``period``, or neither).
        period: the budget's period in steps.
        offset: δ, added to the initial membrane in units of θ (one step's shape or broadcastable): the
            calibrated offsets of COS (:mod:`ann2snn.methods.calibrate`).
    """

    kind = "multibit"

    def __init__(self, threshold: float | torch.Tensor = 1.0, *, shift: float = 0.5, max_spikes: int = 1,
                 levels: int | None = None, period: int | None = None,
                 offset: float | torch.Tensor | None = None) -> None:
        super().__init__()
        theta = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if not bool(torch.all(theta > 0)):
            raise ValueError(f"MultiBitNeuron threshold must be > 0, got min {float(theta.min())}")
        if isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1:
            raise ValueError(f"max_spikes must be an integer >= 1, got {max_spikes!r}")
        if (levels is None) != (period is None) or (levels is not None and (levels < 1 or period < 1)):
            raise ValueError(f"levels and period go together and must be >= 1, got {levels!r} and {period!r}")
        self.shift = float(shift)
        self.max_spikes = int(max_spikes)
        self.levels = None if levels is None else int(levels)
        self.period = None if period is None else int(period)
        self.state_names = ("v", "n", "steps") if self.levels is not None else ("v", "n")
        self.register_buffer("threshold", theta)
        off = torch.zeros(()) if offset is None else torch.as_tensor(offset, dtype=torch.float32)
        self.register_buffer("offset", off.detach().clone())
        self.factor = 1.0  # decisions at factor·θ: verification's tie probe only

    @property
    def calibrated(self) -> bool:
        """True when the initial membrane carries offsets (COS)."""
        return bool(self.offset.ne(0).any())

    def init_state(self, x: torch.Tensor) -> State:
        v = torch.broadcast_to((self.shift + self.offset.to(x)) * self.threshold.to(x), x.shape).clone()
        state = (v, torch.zeros_like(x))
        if self.levels is not None:
            state += (x.new_zeros(x.shape[0], *([1] * (x.dim() - 1))),)
        return state

    def budget(self, steps: torch.Tensor) -> torch.Tensor:
        """The most spikes a neuron may have emitted after ``steps`` steps: ``levels·⌈steps/period⌉``."""
        return torch.ceil(steps / self.period) * self.levels

    def step(self, x: torch.Tensor, *, state: State) -> tuple[torch.Tensor, State]:
        v, n = state[0] + x, state[1]
        theta = self.threshold.to(x)
        s = torch.clamp(torch.floor(v / (theta * self.factor)), 0.0, float(self.max_spikes))
        rest: tuple = ()
        if self.levels is not None:
            steps = state[2] + 1
            s = torch.minimum(s, self.budget(steps) - n)
            rest = (steps,)
        out = s * theta
        return out, (v - out, n + s, *rest)

    def spike_counts(self, output: torch.Tensor) -> torch.Tensor:
        """Spikes per element of an output (``output/θ``): a message of value 3θ is three spike events."""
        return torch.round(output / self.threshold.to(output)).abs()

    def tie_probe(self, factor: float) -> "MultiBitNeuron":
        probe = copy_multibit(self)
        probe.factor = float(factor)
        return probe

    def extra_repr(self) -> str:
        th = f"{float(self.threshold):g}" if self.threshold.numel() == 1 else f"tensor{tuple(self.threshold.shape)}"
        budget = f", budget={self.levels}/{self.period} steps" if self.levels is not None else ""
        cal = ", offsets" if self.calibrated else ""
        return f"threshold={th}, shift={self.shift}, max_spikes={self.max_spikes}{budget}{cal}"


def copy_multibit(m: MultiBitNeuron, **changes) -> MultiBitNeuron:
    """A new :class:`MultiBitNeuron` with ``m``'s parameters, some replaced (``offset=...``, ``max_spikes=...``)."""
    kw = dict(threshold=m.threshold, shift=m.shift, max_spikes=m.max_spikes, levels=m.levels, period=m.period,
              offset=m.offset)
    kw.update(changes)
    return MultiBitNeuron(kw.pop("threshold"), **kw)


def multibit_for_qcfs(q: nn.Module, theta: torch.Tensor, max_spikes: int) -> MultiBitNeuron:
    """The multi-bit neuron replacing the unsigned QCFS ``q`` (``theta``: its threshold for one step's shape).

    Spike value ``θ·T_D/L`` with ``T_D = ⌈L/D⌉``: after ``T_D`` steps of a constant input its value is the QCFS
    level (a spike budget of L per ``T_D`` steps when D does not divide L); ``D = 1`` is the IF neuron's rule.
    """
    if getattr(q, "signed", False):
        raise ValueError("multi-bit spikes are for unsigned QCFS; a signed quantizer becomes a bipolar neuron")
    L, D = int(q.levels), int(max_spikes)
    period = -(-L // D)
    budget = {"levels": L, "period": period} if D * period > L else {}
    return MultiBitNeuron(theta * (period / L), shift=q.shift, max_spikes=D, **budget)
