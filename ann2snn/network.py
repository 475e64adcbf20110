"""``convert``: QANN → :class:`SpikingNetwork`, the spiking GraphModule with what it needs to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ann2snn.errors import Ann2SnnError
from ann2snn.files import qann_payload
from ann2snn.layers import qcfs_modules
from ann2snn.limits import steps_error
from ann2snn.neurons import reset_states, stateful_modules
from ann2snn.passes import ConversionReport, run_pipeline
from ann2snn.simulator import CONVENTIONS, ScheduledStep, TimeSchedule, readout, run_steps

#: default T = this × L under the exact convention (measured: zoo CNNs settle by ~2L; deep nets take longer)
EXACT_DEFAULT_T_FACTOR = 4

__all__ = ["SpikingNetwork", "ConversionInfo", "convert", "simulate", "example_input_for"]


@dataclass(frozen=True)
class ConversionInfo:
    """What a network was converted from and how: read by ``save``, the exporters' metadata, eval and reports.

    ``levels``: the QCFS levels L present (sorted); ``shift``: φ, one float or a tuple when layers differ;
    ``neuron_kinds``: the ``kind`` of every stateful operator (sorted); ``maxpool``: the ``convert`` option;
    ``arch`` / ``arch_kwargs``: the zoo architecture, when the QANN has one; ``qann_payload``: the QANN as a model
    file stores it (:func:`ann2snn.files.qann_payload`), what ``save`` writes; ``convention``: ``"rate"`` or
    ``"exact"`` (the time schedule); ``schedule_length``: the L of the exact schedule (None for rate).
    """

    levels: tuple[int, ...] = ()
    shift: float | tuple[float, ...] | None = None
    neuron_kinds: tuple[str, ...] = ()
    maxpool: str = "spiking"
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    qann_payload: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    convention: str = "rate"
    schedule_length: int | None = None
    max_spikes: int = 1



class SpikingNetwork(nn.Module):
    """A converted network: a spiking GraphModule plus its default T, input shape and conversion report.

    - ``snn(x)``: logits after ``T`` steps (mean of the output layer over time);
    - ``snn.simulate(x, T)``: the logits at every t = 1..T, ``[T, B, K]``, from one run;
    - ``snn.step(x_t)`` / ``snn.reset()``: one step at a time, state kept inside (streaming).
    """

    def __init__(self, graph_module: fx.GraphModule, *, T: int, input_shape: tuple[int, ...],
                 report: ConversionReport | None = None, info: ConversionInfo | None = None) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.T = int(T)
        self.input_shape = tuple(input_shape)
        self.report = report
        self.info = info if info is not None else ConversionInfo()
        self._stepper: ScheduledStep | None = None  # single-step driver under the exact schedule (counts steps)
        self._t = 0

    @property
    def schedule(self) -> TimeSchedule:
        """The time convention the network was converted for (rate, or exact with its schedule length)."""
        return TimeSchedule(self.info.convention, self.info.schedule_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.simulate(x)[-1]

    def simulate(self, x: torch.Tensor, T: int | None = None, *, mode: str = "multi",
                 encoding: str = "direct") -> torch.Tensor:
        """Logits at every step: ``out[t-1]`` is the mean output over steps 1..t, shape ``[T, B, K]``."""
        return readout(run_steps(self.graph_module, x, self.T if T is None else T, mode=mode, encoding=encoding,
                                 schedule=self.schedule), self.schedule)

    @torch.no_grad()
    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        """One time step (instantaneous output); state persists until :meth:`reset`.

        Under the exact convention the network counts its steps: give it the input at every step, it injects
        the input and the constants for the first L steps only."""
        if not self.schedule.exact:
            return self.graph_module(x_t)
        if self._stepper is None:
            self._stepper, self._t = ScheduledStep(self.graph_module, self.schedule), 0
        self._t += 1
        return self._stepper.step(x_t, self._t)

    def reset(self) -> None:
        reset_states(self.graph_module)
        self._stepper, self._t = None, 0

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
            input_shape: tuple[int, ...] | None = None, maxpool: str = "spiking",
            convention: str = "rate", max_spikes: int = 1) -> SpikingNetwork:
    """Convert a QANN into a :class:`SpikingNetwork` of IF neurons (rate) or bipolar neurons (exact).

    Args:
        model: a QANN (QCFS activations). It is copied, never modified.
        T: default number of time steps; defaults to the QCFS levels L (rate, where a QCFS SNN is most accurate)
            or 4·L (exact).
        example_input: a batch the model takes, for the shapes the passes need (default: zeros of ``input_shape``).
        input_shape: the shape of one sample, without the batch dimension (default: ``model.input_shape``).
        maxpool: ``"spiking"`` (spiking max on accumulated counts) or ``"error"`` (refuse max-pooling).
        convention: ``"rate"`` (IF neurons, input and constants every step: the seed's QCFS method) or
            ``"exact"`` (bounded bipolar neurons, input and constants for the first L steps only: from some step
            on every neuron's count equals its QANN level and the logits equal the QANN's; DESIGN §2b). Signed
            quantizers become bipolar neurons under both.
        max_spikes: D > 1 (rate convention, unsigned quantizers): multi-bit neurons that emit up to D spikes a step
            and reach the QCFS level at T = ⌈L/D⌉ (:class:`ann2snn.neurons.MultiBitNeuron`); default T ⌈L/D⌉.

    Examples:
        >>> snn = ann2snn.convert(qann, T=4)
        >>> logits_per_t = snn.simulate(x)          # [T, B, K]
    """
    if T is not None and steps_error(T):
        raise Ann2SnnError(steps_error(T))
    if maxpool not in ("spiking", "error"):
        raise Ann2SnnError(f"maxpool must be 'spiking' or 'error', got {maxpool!r}")
    if convention not in CONVENTIONS:
        raise Ann2SnnError(f"convention must be 'rate' or 'exact', got {convention!r} (CLI: --mode rate|exact)")
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1:
        raise Ann2SnnError(f"max_spikes must be an integer >= 1, got {max_spikes!r}")
    if max_spikes > 1 and convention != "rate":
        raise Ann2SnnError("multi-bit spikes (max_spikes > 1) work under the rate convention only; use --mode rate")
    _check_finite(model)
    x = example_input_for(model, example_input, input_shape)
    levels = sorted({q.levels for _, q in qcfs_modules(model)})
    length = max(levels) if convention == "exact" and levels else None
    gm, report = run_pipeline(model, example_input=x, options={"to_spiking": {
        "maxpool": maxpool, "convention": convention, "schedule_length": length, "max_spikes": max_spikes}})
    shifts = sorted({q.shift for _, q in qcfs_modules(model)})
    arch = getattr(model, "arch_name", None)
    info = ConversionInfo(
        levels=tuple(levels), shift=shifts[0] if len(shifts) == 1 else tuple(shifts),
        neuron_kinds=tuple(sorted({m.kind for _, m in stateful_modules(gm)})), maxpool=maxpool, arch=arch,
        arch_kwargs=getattr(model, "arch_kwargs", None),
        qann_payload=qann_payload(model, input_shape=tuple(x.shape[1:])) if arch else None,
        convention=convention, schedule_length=length, max_spikes=max_spikes,
    )
    if T is None:
        T = default_steps(levels, convention=convention, max_spikes=max_spikes)
    return SpikingNetwork(gm, T=T, input_shape=tuple(x.shape[1:]), report=report, info=info)


def default_steps(levels, *, convention: str = "rate", max_spikes: int = 1) -> int:
    """The T that :func:`convert` picks for quantizers of these ``levels`` (an iterable of L): rate, accuracy peaks
    near T = L; exact, logits settle on the QANN's a few steps after L; multi-bit, the QCFS level comes at ⌈L/D⌉."""
    levels = list(levels)
    T = (max(levels) if levels else 8) * (EXACT_DEFAULT_T_FACTOR if convention == "exact" else 1)
    return -(-T // max_spikes)


def _check_finite(model: nn.Module) -> None:
    """Refuse a QANN with a NaN or infinite parameter or buffer: its SNN could not compute what it computes."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise Ann2SnnError(f"{kind} {name!r} of the QANN has {bad} NaN or infinite value(s); the model file is "
                                   "damaged or training diverged: retrain or restore a good checkpoint")


def simulate(snn: SpikingNetwork, x: torch.Tensor, T: int | None = None, *, mode: str = "multi",
             encoding: str = "direct") -> torch.Tensor:
    """Logits at every t = 1..T (``[T, B, K]``) of ``snn`` on ``x``; see :meth:`SpikingNetwork.simulate`."""
    return snn.simulate(x, T, mode=mode, encoding=encoding)
