"""``convert``: QANN → :class:`SpikingNetwork`, the spiking GraphModule with what it needs to run."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from ann2snn.errors import Ann2SnnError
from ann2snn.layers import qcfs_modules
from ann2snn.neurons import reset_states, stateful_modules
from ann2snn.passes import ConversionReport, run_pipeline
from ann2snn.simulator import run_steps, running_mean

__all__ = ["SpikingNetwork", "convert", "simulate", "example_input_for"]


class SpikingNetwork(nn.Module):
    """A converted network: a spiking GraphModule plus its default T, input shape and conversion report.

    - ``snn(x)``: logits after ``T`` steps (mean of the output layer over time);
    - ``snn.simulate(x, T)``: the logits at every t = 1..T, ``[T, B, K]``, from one run;
    - ``snn.step(x_t)`` / ``snn.reset()``: one step at a time, state kept inside (streaming).
    """

    def __init__(self, graph_module: fx.GraphModule, *, T: int, input_shape: tuple[int, ...],
                 report: ConversionReport | None = None, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.T = int(T)
        self.input_shape = tuple(input_shape)
        self.report = report
        self.info = dict(info or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.simulate(x)[-1]

    def simulate(self, x: torch.Tensor, T: int | None = None, *, mode: str = "multi",
                 encoding: str = "direct") -> torch.Tensor:
        """Logits at every step: ``out[t-1]`` is the mean output over steps 1..t, shape ``[T, B, K]``."""
        return running_mean(run_steps(self.graph_module, x, self.T if T is None else T, mode=mode,
                                      encoding=encoding))

    @torch.no_grad()
    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        """One time step (instantaneous output); state persists until :meth:`reset`."""
        return self.graph_module(x_t)

    def reset(self) -> None:
        reset_states(self.graph_module)

    def stateful(self):
        """``(name, module)`` for every stateful operator, in graph order."""
        return stateful_modules(self.graph_module)


def example_input_for(model: nn.Module, example_input=None, input_shape=None, batch: int = 2) -> torch.Tensor:
    """The tracing input: given, or zeros of ``input_shape``, or of the model's own ``input_shape``."""
    if example_input is not None:
        return example_input
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise Ann2SnnError("the input shape is unknown: pass example_input or input_shape=(C, H, W) "
                           "(CLI: --input-shape C,H,W)")
    return torch.zeros(batch, *shape)


def convert(model: nn.Module, T: int | None = None, *, example_input: torch.Tensor | None = None,
            input_shape: tuple[int, ...] | None = None, maxpool: str = "spiking") -> SpikingNetwork:
    """Convert a QANN into a :class:`SpikingNetwork` of IF neurons.

    Args:
        model: a QANN (QCFS activations). It is copied, never modified.
        T: default number of time steps; defaults to the QCFS levels L, where a QCFS SNN is most accurate.
        example_input / input_shape: what the model takes (defaults to ``model.input_shape``).
        maxpool: ``"spiking"`` (spiking max on accumulated counts) or ``"error"`` (refuse max-pooling).

    Example:
        >>> snn = ann2snn.convert(qann, T=4)
        >>> logits_per_t = snn.simulate(x)          # [T, B, K]
    """
    if T is not None and (not isinstance(T, int) or isinstance(T, bool) or T <= 0):
        raise Ann2SnnError(f"T must be a positive number of time steps, got {T!r}")
    if maxpool not in ("spiking", "error"):
        raise Ann2SnnError(f"maxpool must be 'spiking' or 'error', got {maxpool!r}")
    x = example_input_for(model, example_input, input_shape)
    levels = sorted({q.levels for _, q in qcfs_modules(model)})
    gm, report = run_pipeline(model, example_input=x, options={"convert_maxpool": {"mode": maxpool}})
    shifts = sorted({q.shift for _, q in qcfs_modules(model)})
    info = {
        "levels": levels,
        "shift": shifts[0] if len(shifts) == 1 else shifts,
        "neuron_kinds": sorted({m.kind for _, m in stateful_modules(gm)}),
        "maxpool": maxpool,
        "arch": getattr(model, "arch_name", None),
        "arch_kwargs": getattr(model, "arch_kwargs", None),
    }
    if getattr(model, "arch_name", None):
        from ann2snn.checkpoint import _qann_payload

        info["qann_payload"] = _qann_payload(model, input_shape=tuple(x.shape[1:]))
    T = T if T is not None else (max(levels) if levels else 8)
    return SpikingNetwork(gm, T=T, input_shape=tuple(x.shape[1:]), report=report, info=info)


def simulate(snn: SpikingNetwork, x: torch.Tensor, T: int | None = None, *, mode: str = "multi",
             encoding: str = "direct") -> torch.Tensor:
    """Logits at every t = 1..T (``[T, B, K]``) of ``snn`` on ``x``; see :meth:`SpikingNetwork.simulate`."""
    return snn.simulate(x, T, mode=mode, encoding=encoding)
