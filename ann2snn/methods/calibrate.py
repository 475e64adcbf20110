"""Two fixes for the error of a QCFS SNN at few time steps, as transforms of a converted network.

**COS** (calibrating offset spikes; Hao et al., ICLR 2023). After T steps a neuron's spike count ``C_T`` often
differs by about one spike from the count an evenly spread input would give, ``Ĉ_T = clip(floor(X_T/θ + φ), 0,
D·T)`` (``X_T``: the input it received): the *offset spike* ``ψ = C_T − Ĉ_T``. Shifting the initial membrane by
``−ψ·θ`` removes it. :func:`apply_cos` measures the offset spikes of every neuron on calibration data and shifts its
initial membrane by the shift (a multiple of θ/4 in [−θ, θ]) that leaves the fewest, the one nearest the mean
measured offset ``−mean ψ`` among equals, layer by layer in graph order — each layer measured with the layers
before it already calibrated — repeating ``iterations`` times per layer. The shifts depend on T, so a
network is calibrated for one T. The paper estimates ψ per input with a pre-run at inference; here the shift is
fixed from calibration data, so the calibrated network is an ordinary multi-bit neuron network (``offset``) that
exports to both ONNX forms.

**SRP** (residual membrane potential; Hao et al., AAAI 2023). Most of the error at few steps comes from neurons
that fire although the QANN's value is 0 (positive input first, negative later). After a pre-run of τ steps on
the same input, such a neuron's membrane is not charged (``v_τ ≤ 0``); :func:`apply_srp` makes every neuron run
τ steps, keep a mask ``[v_τ > ε·θ]`` (the neurons still charged), reset, and emit only where the mask is set for
the rest of the run. The logits at T are read over the T steps *after* the pre-run (:func:`srp_readout`), and the
pre-run's τ steps are spent (energy counts them). The pre-run and reset have no ONNX form: exporting is refused.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Iterator

import torch
from torch import fx

from ann2snn.data import batches
from ann2snn.errors import Ann2SnnError
from ann2snn.neurons import IFNeuron, MultiBitNeuron, State, copy_multibit
from ann2snn.ops.graph import set_module
from ann2snn.simulator import readout, run_steps

__all__ = ["apply_cos", "cos_shift", "offset_spikes", "count_offset_spikes", "COS_SHIFTS", "SRPNeuron", "apply_srp",
           "srp_readout", "SRP_EPS"]

#: SRP keeps a neuron whose residual membrane after the pre-run exceeds this many thresholds (the seed's 1e-3)
SRP_EPS = 1e-3


def _as_multibit(name: str, m) -> MultiBitNeuron:
    if isinstance(m, MultiBitNeuron):
        return copy_multibit(m)
    if type(m) is IFNeuron:
        return MultiBitNeuron(m.threshold, shift=m.shift)
    raise Ann2SnnError(f"neuron {name!r} is a {type(m).__name__}; COS and SRP work on IF and multi-bit neurons "
                       "(rate convention, unsigned QCFS): convert with --mode rate")


def _neurons(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, MultiBitNeuron]]:
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (IFNeuron, MultiBitNeuron)):
            yield n, gm.get_submodule(n.target)


def _copy(snn, transform) -> "SpikingNetwork":  # noqa: F821
    """A copy of ``snn`` whose IF / multi-bit neurons are replaced by ``transform(name, neuron)``."""
    from ann2snn.network import SpikingNetwork

    if snn.schedule.exact:
        raise Ann2SnnError("COS and SRP calibrate rate-convention networks (IF neurons); convert with --mode rate")
    gm = copy.deepcopy(snn.graph_module)
    for node, m in list(_neurons(gm)):
        set_module(gm, node.target, transform(node.target, m))
    for _, m in gm.named_modules():
        if hasattr(m, "reset"):
            m.reset()
    kinds = tuple(sorted({getattr(m, "kind", "") for _, m in gm.named_modules() if hasattr(m, "state_names")}))
    return SpikingNetwork(gm, T=snn.T, input_shape=snn.input_shape, report=snn.report,
                          info=dataclasses.replace(snn.info, neuron_kinds=kinds))


#: the initial-membrane shifts COS tries per neuron, in thresholds
COS_SHIFTS = tuple(k / 4 for k in range(-4, 5))


def _ideal(m, X: torch.Tensor, T: int) -> torch.Tensor:
    """``clip(floor(X/θ + φ), 0, D·T)`` (within the spike budget): the count of input X spread evenly."""
    ideal = torch.clamp(torch.floor(X / m.threshold + m.shift), 0.0, float(getattr(m, "max_spikes", 1) * T))
    if getattr(m, "levels", None) is not None:
        ideal = torch.clamp(ideal, max=float(m.levels * -(-T // m.period)))
    return ideal


def _layer_inputs(gm: fx.GraphModule, target: str, x: torch.Tensor, T: int, batch_size: int):
    """Yield the ``[T, B, ...]`` inputs of neuron module ``target`` over T steps, batch by batch."""
    for xb, _ in batches(x, torch.zeros(len(x)), batch_size):
        seen = {}

        def observe(node, inputs, output):
            if node.op == "call_module" and node.target == target:
                seen["x"] = inputs[0]

        run_steps(gm, xb, T, observer=observe)
        yield seen["x"]


@torch.no_grad()
def offset_spikes(gm: fx.GraphModule, target: str, x: torch.Tensor, T: int, *, batch_size: int = 256
                  ) -> torch.Tensor:
    """Mean offset spikes ``ψ = C_T − clip(floor(X_T/θ + φ), 0, D·T)`` of neuron module ``target`` on ``x``, per
    neuron (one step's shape): its spike count after T steps minus the count of its accumulated input spread evenly."""
    m = gm.get_submodule(target)
    total, n = None, 0
    for seq in _layer_inputs(gm, target, x, T, batch_size):
        counts = torch.round(m.multi_step(seq) / m.threshold).sum(0)
        psi = (counts - _ideal(m, seq.sum(0), T)).sum(0)
        total = psi if total is None else total + psi
        n += seq.shape[1]
    return total / n


@torch.no_grad()
def count_offset_spikes(gm: fx.GraphModule, target: str, x: torch.Tensor, T: int, *, batch_size: int = 256) -> float:
    """``Σ|ψ|`` of neuron module ``target`` over the images ``x`` and its neurons: the spikes it emits too many or
    too few after T steps (what COS reduces)."""
    m = gm.get_submodule(target)
    return sum(float((torch.round(m.multi_step(seq) / m.threshold).sum(0) - _ideal(m, seq.sum(0), T)).abs().sum())
               for seq in _layer_inputs(gm, target, x, T, batch_size))


@torch.no_grad()
def cos_shift(gm: fx.GraphModule, target: str, x: torch.Tensor, T: int, *, batch_size: int = 256) -> torch.Tensor:
    """The initial-membrane shift (in θ) COS gives multi-bit neuron module ``target``, per neuron: among
    :data:`COS_SHIFTS`, those with the fewest offset spikes ``Σ|ψ|`` over ``x``, and of these the one nearest the
    measured mean offset ``−mean ψ``. The layer's inputs do not depend on its own membrane, so they are recorded
    once per batch and the shifts tried on the neuron alone."""
    m = gm.get_submodule(target)
    cost, psi_sum, n = None, None, 0
    for seq in _layer_inputs(gm, target, x, T, batch_size):
        ideal = _ideal(m, seq.sum(0), T)
        errs = []
        for d in COS_SHIFTS:
            probe = copy_multibit(m, offset=m.offset + d)
            psi = probe.spike_counts(probe.multi_step(seq)).sum(0) - ideal
            errs.append(psi.abs().sum(0))
            if d == 0:
                psi_sum = psi.sum(0) if psi_sum is None else psi_sum + psi.sum(0)
        errs = torch.stack(errs)
        cost = errs if cost is None else cost + errs
        n += seq.shape[1]
    shifts = torch.tensor(COS_SHIFTS).reshape(-1, *([1] * (cost.dim() - 1)))
    target_shift = -psi_sum / n
    best = cost.min(0).values
    distance = torch.where(cost <= best + 1e-6, (shifts - target_shift).abs(), torch.full_like(cost, float("inf")))
    return shifts.squeeze().index_select(0, distance.argmin(0).flatten()).reshape(best.shape)


def apply_cos(snn, x_calib: torch.Tensor, T: int, *, iterations: int = 1, batch_size: int = 256):
    """A copy of ``snn`` calibrated by COS for T steps on the calibration images ``x_calib`` (``[N, ...]``).

    Each neuron (IF neurons become :class:`~ann2snn.neurons.MultiBitNeuron` with D = 1, the same rule) moves its
    initial membrane by :func:`cos_shift`, layer by layer in graph order, ``iterations`` times per layer.

    Examples:
        >>> cos4 = apply_cos(ann2snn.convert(qann), data.x_train[:512], T=4)
        >>> cos4.simulate(x, 4)[-1]          # logits at T = 4
    """
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise Ann2SnnError(f"T must be a positive number of time steps, got {T!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise Ann2SnnError(f"COS iterations must be a positive integer, got {iterations!r}")
    if len(x_calib) == 0:
        raise Ann2SnnError("COS needs calibration images; pass at least one (--calib-samples)")
    out = _copy(snn, _as_multibit)
    gm = out.graph_module
    for node, m in list(_neurons(gm)):
        for _ in range(iterations):
            m.offset = m.offset + cos_shift(gm, node.target, x_calib, T, batch_size=batch_size)
    return out


class SRPNeuron(MultiBitNeuron):
    """A multi-bit (or IF, D = 1) neuron with SRP's pre-run: for its first ``pre_steps`` steps it runs as usual;
    after them it keeps the mask ``[v > ε·θ]``, resets (membrane, count, budget) and emits only where the mask is
    set. Extra states: ``mask`` and ``t`` (the step)."""

    def __init__(self, base: MultiBitNeuron, pre_steps: int, *, eps: float = SRP_EPS) -> None:
        super().__init__(base.threshold, shift=base.shift, max_spikes=base.max_spikes, levels=base.levels,
                         period=base.period, offset=base.offset)
        self.pre_steps, self.eps = int(pre_steps), float(eps)
        self.state_names = (*self.state_names, "mask", "t")

    def init_state(self, x: torch.Tensor) -> State:
        return (*super().init_state(x), torch.ones_like(x), x.new_zeros(x.shape[0], *([1] * (x.dim() - 1))))

    def step(self, x: torch.Tensor, *, state: State) -> tuple[torch.Tensor, State]:
        *base, mask, t = state
        y, base = super().step(x, state=tuple(base))
        t = t + 1
        y = y * mask
        if int(t.flatten()[0]) == self.pre_steps:  # end of the pre-run: keep the charged neurons, start again
            mask = (base[0] > self.eps * self.threshold.to(x)).to(x.dtype)
            base = super().init_state(x)
        return y, (*base, mask, t)

    def tie_probe(self, factor: float) -> None:
        return None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pre_steps={self.pre_steps}"


def apply_srp(snn, pre_steps: int, *, eps: float = SRP_EPS):
    """A copy of ``snn`` whose neurons run SRP's pre-run of ``pre_steps`` steps (:class:`SRPNeuron`).

    Run it for ``pre_steps + T`` steps and read the logits with :func:`srp_readout`."""
    if isinstance(pre_steps, bool) or not isinstance(pre_steps, int) or pre_steps < 1:
        raise Ann2SnnError(f"the SRP pre-run needs a positive number of steps, got {pre_steps!r}")
    return _copy(snn, lambda name, m: SRPNeuron(_as_multibit(name, m), pre_steps, eps=eps))


def srp_readout(outputs: torch.Tensor, pre_steps: int) -> torch.Tensor:
    """``[pre_steps + T, B, K]`` per-step outputs → the logits at t = 1..T after the pre-run, ``[T, B, K]``."""
    if outputs.shape[0] <= pre_steps:
        raise Ann2SnnError(f"an SRP run needs more than its {pre_steps} pre-run steps, got {outputs.shape[0]}")
    return readout(outputs[pre_steps:])
