"""The PyTorch reference simulator of a spiking GraphModule.

Multi-step (default): stateless layers run once on ``[T·B, ...]``; stateful operators scan over T with
their ``multi_step``. With direct input encoding, the part of the graph before the first stateful operator
sees the same input at every step, so it runs once on ``[B, ...]`` and is broadcast over T only where it
meets a time-varying value. Single-step: the GraphModule is called T times, each stateful operator keeping
its state between calls (the streaming mode). Both give identical outputs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import fx

from ann2snn.errors import Ann2SnnError
from ann2snn.neurons import StatefulModule, reset_states

__all__ = ["run_steps", "running_mean"]


def running_mean(outputs: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` per-step outputs → the mean over steps 1..t at every t (the logits at T = t)."""
    t = torch.arange(1, outputs.shape[0] + 1, dtype=outputs.dtype, device=outputs.device)
    return outputs.cumsum(0) / t.reshape([-1] + [1] * (outputs.dim() - 1))


@torch.no_grad()
def run_steps(gm: fx.GraphModule, x: torch.Tensor, T: int, *, mode: str = "multi",
              encoding: str = "direct", observer: Callable | None = None) -> torch.Tensor:
    """Run ``gm`` for ``T`` steps and return its instantaneous outputs ``[T, B, ...]``.

    Args:
        x: ``[B, ...]`` analog input (``encoding="direct"``: the same input at every step) or ``[T, B, ...]``
           pre-encoded input (``encoding="sequence"``).
        mode: ``"multi"`` (batched over time) or ``"single"`` (step by step with module state).
        observer: ``observer(node, inputs, output)``, called (multi-step mode) after every operation with its
            tensor inputs and output, each as ``[T, B, ...]`` (time-invariant values as expanded views, no copies).
            This is how spike counts, firing rates and operation counts are recorded.
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
            return torch.stack([gm(x if encoding == "direct" else x[t]) for t in range(T)])
        finally:
            reset_states(gm)
    if mode != "multi":
        raise Ann2SnnError(f"mode must be 'multi' or 'single', got {mode!r}")
    out = _MultiStep(gm, T, static_input=encoding == "direct", observer=observer).run(
        x if encoding == "direct" else x.flatten(0, 1))
    return out.unflatten(0, (T, -1))


class _MultiStep(fx.Interpreter):
    """Interpreter that keeps time-invariant values at ``[B, ...]`` and time-varying ones at ``[T·B, ...]``."""

    def __init__(self, gm: fx.GraphModule, T: int, *, static_input: bool, observer: Callable | None = None) -> None:
        super().__init__(gm)
        self.T = T
        self.static_input = static_input
        self.static: set[fx.Node] = set()
        self.observer = observer

    def as_sequence(self, node: fx.Node, value=None):
        """``node``'s value as ``[T, B, ...]`` (a view)."""
        v = self.env[node] if value is None else value
        if not isinstance(v, torch.Tensor):
            return v
        return v.unsqueeze(0).expand(self.T, *v.shape) if node in self.static else v.unflatten(0, (self.T, -1))

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
            return v.unsqueeze(0).expand(self.T, *v.shape).flatten(0, 1)
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
        return getattr(self, n.op)(n.target, args, kwargs)
