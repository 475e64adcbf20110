"""The PyTorch reference simulator of a spiking GraphModule.

Multi-step (default): stateless layers run once on ``[T·B, ...]``; stateful operators scan over T with
their ``multi_step``. With direct input encoding, the part of the graph before the first stateful operator
sees the same input at every step, so it runs once on ``[B, ...]`` and is broadcast over T only where it
meets a time-varying value. Single-step: the graph runs once per step, each stateful operator keeping
its state between calls (the streaming mode). Both give identical outputs.

Two time conventions (:class:`TimeSchedule`, DESIGN §2b). A stream's per-step messages ``x_t`` sum to ``S_t``;
its value is ``S_t / N(t)``:

- ``rate``: ``N(t) = t``; the input and every constant (biases, BN shifts) are injected at every step;
- ``exact``: ``N(t) = min(t, L)``; the input and every constant are injected for ``t ≤ L`` only. A constant is
  whatever an operation outputs when its time-varying inputs are zero (``f(0)``): after step L it is removed
  from each operation's message, so a stateless op sends ``f(x_t) − f(0)`` — for the affine ops of a converted
  network exactly its linear part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ann2snn.errors import Ann2SnnError
from ann2snn.neurons import StatefulModule, reset_states

__all__ = ["run_steps", "running_mean", "readout", "TimeSchedule", "RATE", "CONVENTIONS"]

CONVENTIONS = ("rate", "exact")


@dataclass(frozen=True)
class TimeSchedule:
    """When the input and the constants are injected, and how a running sum is read as a value.

    ``rate``: every step, value ``S_t / t``. ``exact``: steps ``1..length`` only, value ``S_t / min(t, length)``.
    """

    convention: str = "rate"
    length: int | None = None

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise Ann2SnnError(f"the time convention must be 'rate' or 'exact', got {self.convention!r}")
        if self.convention == "exact" and (not isinstance(self.length, int) or self.length <= 0):
            raise Ann2SnnError(f"the exact convention needs a schedule length L >= 1, got {self.length!r}")

    @property
    def exact(self) -> bool:
        return self.convention == "exact"

    def injected(self, t: int) -> bool:
        """True when the input and the constants are injected at step ``t`` (1-based)."""
        return not self.exact or t <= self.length

    def steps_counted(self, t: int) -> int:
        """``N(t)``: how many steps the value at step t averages over."""
        return min(t, self.length) if self.exact else t

    def gates(self, T: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """``[T]``: 1.0 where step t injects constants, else 0.0."""
        return torch.tensor([float(self.injected(t)) for t in range(1, T + 1)], dtype=dtype, device=device)

    def counts(self, T: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """``[T]``: ``N(t)`` for t = 1..T."""
        return torch.tensor([float(self.steps_counted(t)) for t in range(1, T + 1)], dtype=dtype, device=device)


RATE = TimeSchedule()


def running_mean(outputs: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` per-step outputs → the mean over steps 1..t at every t (the logits at T = t)."""
    t = torch.arange(1, outputs.shape[0] + 1, dtype=outputs.dtype, device=outputs.device)
    return outputs.cumsum(0) / t.reshape([-1] + [1] * (outputs.dim() - 1))


def readout(outputs: torch.Tensor, schedule: TimeSchedule = RATE) -> torch.Tensor:
    """``[T, B, ...]`` per-step outputs → the value at every t: running sum / ``N(t)`` (the logits at T = t)."""
    if not schedule.exact:
        return running_mean(outputs)
    n = schedule.counts(outputs.shape[0], dtype=outputs.dtype, device=outputs.device)
    return outputs.cumsum(0) / n.reshape([-1] + [1] * (outputs.dim() - 1))


@torch.no_grad()
def run_steps(gm: fx.GraphModule, x: torch.Tensor, T: int, *, mode: str = "multi",
              encoding: str = "direct", observer: Callable | None = None,
              schedule: TimeSchedule = RATE) -> torch.Tensor:
    """Run ``gm`` for ``T`` steps and return its instantaneous outputs ``[T, B, ...]``.

    Args:
        x: ``[B, ...]`` analog input (``encoding="direct"``: the same input at every step) or ``[T, B, ...]``
            pre-encoded input (``encoding="sequence"``).
        mode: ``"multi"`` (batched over time) or ``"single"`` (step by step with module state).
        observer: ``observer(node, inputs, output)``, called (multi-step mode) after every operation with its
            tensor inputs and output, each as ``[T, B, ...]`` (time-invariant values as expanded views, no copies).
            This is how spike counts, firing rates and operation counts are recorded.
        schedule: the time convention (:class:`TimeSchedule`) the network was converted for.
    """
    if not isinstance(T, int) or T <= 0:
        raise Ann2SnnError(f"T must be a positive number of time steps, got {T!r}")
    if encoding not in ("direct", "sequence"):
        raise Ann2SnnError(f"encoding must be 'direct' or 'sequence', got {encoding!r}")
    if encoding == "sequence" and x.shape[0] != T:
        raise Ann2SnnError(f"a pre-encoded input needs T={T} steps in dim 0, got shape {tuple(x.shape)}")
    if mode == "single":
        if observer is not None:
            raise Ann2SnnError("an observer needs mode='multi'")
        reset_states(gm)
        try:
            if not schedule.exact:
                return torch.stack([gm(x if encoding == "direct" else x[t]) for t in range(T)])
            run = ScheduledStep(gm, schedule, gate_input=encoding == "direct")
            return torch.stack([run.step(x if encoding == "direct" else x[t], t + 1) for t in range(T)])
        finally:
            reset_states(gm)
    if mode != "multi":
        raise Ann2SnnError(f"mode must be 'multi' or 'single', got {mode!r}")
    out = _MultiStep(gm, T, static_input=encoding == "direct", observer=observer, schedule=schedule).run(
        x if encoding == "direct" else x.flatten(0, 1))
    return out.unflatten(0, (T, -1))


class _MultiStep(fx.Interpreter):
    """Interpreter that keeps time-invariant values at ``[B, ...]`` and time-varying ones at ``[T·B, ...]``."""

    def __init__(self, gm: fx.GraphModule, T: int, *, static_input: bool, observer: Callable | None = None,
                 schedule: TimeSchedule = RATE) -> None:
        super().__init__(gm)
        self.T = T
        self.static_input = static_input
        self.static: set[fx.Node] = set()
        self.observer = observer
        self.schedule = schedule
        # exact convention: static values are injected for t <= L only; per-step constants end after L
        self.cut = schedule.length if schedule.exact and schedule.length < T else None

    def as_sequence(self, node: fx.Node, value=None):
        """``node``'s value as ``[T, B, ...]`` (a view, unless the schedule masks late steps)."""
        v = self.env[node] if value is None else value
        if not isinstance(v, torch.Tensor):
            return v
        if node not in self.static:
            return v.unflatten(0, (self.T, -1))
        seq = v.unsqueeze(0).expand(self.T, *v.shape)
        if self.cut is not None:
            seq = seq.clone()
            seq[self.cut:] = 0
        return seq

    def run_node(self, n: fx.Node):
        out = self._run_node(n)
        if self.observer is not None and n.op in ("call_module", "call_function", "call_method") \
                and isinstance(out, torch.Tensor):
            self.env[n] = out
            inputs = [self.as_sequence(a) for a in n.all_input_nodes if isinstance(self.env.get(a), torch.Tensor)]
            self.observer(n, inputs, self.as_sequence(n, out))
        return out

    def _expand(self, v):
        if isinstance(v, torch.Tensor):
            seq = v.unsqueeze(0).expand(self.T, *v.shape)
            if self.cut is not None:
                seq = seq.clone()
                seq[self.cut:] = 0
            return seq.flatten(0, 1)
        return v

    def _run_node(self, n: fx.Node):
        if n.op == "placeholder":
            if self.static_input:
                self.static.add(n)
            return super().run_node(n)
        inputs = n.all_input_nodes
        all_static = all(i in self.static for i in inputs)
        if n.op == "output":
            out = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else None
            if out is None:
                raise Ann2SnnError("the spiking graph must return a single tensor")
            return self._expand(out) if n.args[0] in self.static else out
        if n.op == "call_module":
            mod = self.fetch_attr(n.target)
            if isinstance(mod, StatefulModule):
                return mod.multi_step(*(self.as_sequence(a) for a in n.args)).flatten(0, 1)
        if all_static:
            if inputs:
                self.static.add(n)
            return super().run_node(n)
        # Mixed: broadcast the time-invariant operands over T, then run the op once on [T·B, ...].
        args = fx.node.map_arg(n.args, lambda a: self._expand(self.env[a]) if a in self.static else self.env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: self._expand(self.env[a]) if a in self.static else self.env[a])
        out = getattr(self, n.op)(n.target, args, kwargs)
        if self.cut is not None and isinstance(out, torch.Tensor):
            const = constant_part(self, n, args, kwargs)
            if const is not None:
                seq = out.unflatten(0, (self.T, -1))
                seq[self.cut:] -= const
        return out


def constant_part(interp: fx.Interpreter, n: fx.Node, args, kwargs) -> torch.Tensor | None:
    """``f(0)`` of node ``n``: its output for one sample with every tensor input zero (None when all zero).

    Under the exact convention this is the constant an operation injects at each step, removed after step L.
    """
    def zero(a):
        return torch.zeros_like(a[:1]) if isinstance(a, torch.Tensor) else a

    zargs = fx.node.map_aggregate(args, zero)
    zkwargs = fx.node.map_aggregate(kwargs, zero)
    c = getattr(interp, n.op)(n.target, zargs, zkwargs)
    if not isinstance(c, torch.Tensor) or not bool(c.any()):
        return None
    return c


class ScheduledStep(fx.Interpreter):
    """Single-step run of a spiking graph under a :class:`TimeSchedule`: at step t the input and every
    operation's constant are injected only when ``schedule.injected(t)`` (stateful operators keep their state
    in their modules, as in ``gm(x)``). ``gate_input=False``: the input is a pre-encoded sequence, fed as given."""

    def __init__(self, gm: fx.GraphModule, schedule: TimeSchedule, *, gate_input: bool = True) -> None:
        super().__init__(gm)
        self.schedule = schedule
        self.gate_input = gate_input
        self._consts: dict[fx.Node, torch.Tensor | None] = {}
        self._on = True

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        self._on = self.schedule.injected(t)
        return self.run(x if self._on or not self.gate_input else torch.zeros_like(x))

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if self._on or n.op not in ("call_module", "call_function", "call_method") or not isinstance(out, torch.Tensor):
            return out
        if n.op == "call_module" and isinstance(self.fetch_attr(n.target), StatefulModule):
            return out
        if n not in self._consts:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self._consts[n] = constant_part(self, n, args, kwargs)
        c = self._consts[n]
        return out if c is None else out - c
