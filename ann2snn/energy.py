"""Operation counts and energy: the ANN's MACs against the SNN's synaptic operations, per layer and per T.

What is counted comes from the operator registry (:mod:`ann2snn.ops`): an op whose record has a ``synapses``
rule is a weighted layer, a spiking operator whose record says ``neuron`` is a neuron layer.

- **ANN MACs** of a weighted layer, per sample: ``output elements × fan-in`` (``fan-in = C_in/groups ·
  k_h·k_w`` for a conv, ``in_features`` for a linear), counted on the converted graph, where BatchNorm is
  already folded into the weights. Pooling, BN and activations are not counted (the usual convention).
- **SNN synaptic operations** (SOPs) of a weighted layer at step t: ``Σ_i [x_t,i ≠ 0] · fanout_i``: every
  nonzero input element (a spike of either sign, or a pooled group of spikes) is an event that reaches
  ``fanout_i`` output neurons, each an accumulate (AC). ``fanout_i`` is exact per input position (borders and
  strides included): the gradient of ``Σ layer(x)`` with every weight 1 with respect to ``x``. For binary spike
  input this is exactly ``spikes × fan-out``.
- **Spikes** of a neuron layer: every nonzero output is one event, whatever its value (+1, −1, ±θ_n of a bipolar
  neuron alike) — except a multi-bit neuron's, whose message of k spikes is k events (``spike_counts``); a layer
  fed by multi-bit spikes (directly or through pooling, flatten or layout ops) counts ``⌈|x|/θ_spike⌉`` events per
  input element (k for k spikes; a pooled group at least one, as for binary spikes).
- **Direct encoding**: a layer that sees the analog input (no spiking operator before it, normally the
  first conv) gets no spikes, so it costs its full MACs at every step its input is nonzero (``analog_per_step``):
  every step in the rate convention, the first L steps in the exact one (the input is injected for t ≤ L only).
- **Energy**: ``E_ANN = MACs · E_MAC``; ``E_SNN(T) = MACs_analog(T) · E_MAC + SOPs(T) · E_AC`` with
  ``E_MAC = 4.6 pJ`` and ``E_AC = 0.9 pJ`` (32-bit float, 45 nm, Horowitz 2014), configurable. Neuron
  membrane updates and memory traffic are not counted.

See ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn

from ann2snn.errors import Ann2SnnError
from ann2snn.neurons import StatefulModule
from ann2snn.ops import REGISTRY, Spiking, Synapses, record_for, record_for_module

__all__ = ["EnergyModel", "WEIGHTED_MODULES", "NON_NEURON_KINDS", "fanout_map", "layer_macs", "ActivityMonitor"]

#: Layers whose cost is counted (MACs in the ANN, synaptic operations in the SNN): records with a synapse rule.
WEIGHTED_MODULES: tuple[type, ...] = tuple(c for r in REGISTRY if r.accounting.synapses for c in r.modules)
#: Stateful operators that are not neurons (no firing rate reported).
NON_NEURON_KINDS: tuple[str, ...] = tuple(r.stateful_kind for r in REGISTRY
                                          if r.spiking is Spiking.STATEFUL and not r.accounting.neuron)


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation, in picojoules (defaults: 32-bit float at 45 nm, Horowitz 2014).

    Args:
        e_mac_pj: one multiply-accumulate (ANN layers, and the SNN's analog-input layer).
        e_ac_pj: one accumulate (an SNN synaptic operation).
        analog_per_step: count the analog-input layer's MACs at every step its input is nonzero; False counts
            them once, as a network that computes the constant input current a single time would.
    """

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    analog_per_step: bool = True

    def __post_init__(self) -> None:
        if not (self.e_mac_pj >= 0 and self.e_ac_pj >= 0):
            raise Ann2SnnError(f"energy constants must be >= 0 pJ, got E_MAC={self.e_mac_pj}, E_AC={self.e_ac_pj}")


def _synapses(m: nn.Module) -> Synapses:
    rec = record_for_module(m)
    if rec is None or rec.accounting.synapses is None:
        raise Ann2SnnError(f"{type(m).__name__} is not a weighted layer with a synapse rule; fanout_map and "
                           "layer_macs take a conv or linear layer")
    return rec.accounting.synapses


def fanout_map(m: nn.Module, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """How many output neurons of ``m`` each input element of one sample (shape ``sample_shape``) reaches.

    Examples:
        >>> fanout_map(nn.Conv2d(1, 2, 3, padding=1), (1, 3, 3))[0]   # 2 channels × 4, 6 or 9 positions
        tensor([[ 8., 12.,  8.], [12., 18., 12.], [ 8., 12.,  8.]])
    """
    syn = _synapses(m)
    x = torch.zeros(1, *sample_shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        syn.ones(m, x).sum().backward()
    return x.grad[0].detach()


def layer_macs(m: nn.Module, out_sample_shape: tuple[int, ...]) -> int:
    """MACs of one sample through weighted layer ``m``, given its output shape for one sample."""
    return math.prod(int(s) for s in out_sample_shape) * _synapses(m).fan_in(m)


def _has_stateful_ancestor(node: fx.Node, modules: dict[str, nn.Module], memo: dict[fx.Node, bool]) -> bool:
    if node in memo:
        return memo[node]
    stack, seen, found = [node], set(), False
    while stack and not found:
        n = stack.pop()
        for a in n.all_input_nodes:
            if a in seen:
                continue
            seen.add(a)
            if a.op == "call_module" and isinstance(modules.get(a.target), StatefulModule):
                found = True
                break
            stack.append(a)
    memo[node] = found
    return found


class _LayerCount:
    def __init__(self, name: str, module: nn.Module, synapses: Synapses, analog: bool, T: int,
                 unit: float | None = None) -> None:
        self.name, self.module, self.synapses, self.analog = name, module, synapses, analog
        self.unit = unit  # value of one spike when fed by multi-bit spikes (events = ⌈|x|/unit⌉), else None
        self.rest = 0.0  # the input value that is no event (rate-coded input: a silent pixel's value)
        self.kind = type(module).__name__
        self.macs: int | None = None
        self.fan_in = synapses.fan_in(module)
        self.sops = torch.zeros(T, dtype=torch.float64)  # summed over samples
        self.events = torch.zeros(T, dtype=torch.float64)
        self.active = torch.zeros(T, dtype=torch.float64)  # analog layer: samples whose step t had nonzero input
        self.inputs: int | None = None
        self._fanout: torch.Tensor | None = None


class _DenseCount:
    """An op computed densely on values (a compensated product): its MACs at every step, in the ANN once."""

    def __init__(self, name: str, module: nn.Module, rule) -> None:
        self.name, self.module, self.rule = name, module, rule
        self.kind = type(getattr(module, "op", module)).__name__
        self.macs: int | None = None


class _NeuronCount:
    def __init__(self, name: str, kind: str, T: int, counter=None) -> None:
        self.name, self.kind = name, kind
        self.counter = counter  # output -> spikes per element (multi-bit neurons), else None: nonzero = 1
        self.neurons: int | None = None
        self.spikes = torch.zeros(T, dtype=torch.float64)  # summed over samples


class ActivityMonitor:
    """Counts spikes of every neuron layer and synaptic operations of every weighted layer (as the operator
    registry classes them) while the reference simulator runs a spiking GraphModule in multi-step mode.

    Pass it as the simulator's observer (:func:`ann2snn.simulator.run_steps`, multi-step) with the same ``T``,
    count the samples, then read :meth:`summary`. Counts are per step, so the numbers at every T' ≤ T come from
    the same run (the first T' steps of a T-step run are a T'-step run). ``input_rest``: the network is fed spikes
    (rate coding) on this rest value, so no layer is analog, and a layer fed by the input counts an event wherever
    the input differs from it.

    Examples:
        >>> mon = ActivityMonitor(snn.graph_module, T=8)
        >>> for xb, _ in batches(x, y, 256):
        ...     run_steps(snn.graph_module, xb, 8, observer=mon)
        ...     mon.add_samples(len(xb))
        >>> mon.summary([1, 2, 4, 8])["per_T"]
    """

    def __init__(self, gm: fx.GraphModule, T: int, *, energy: EnergyModel | None = None,
                 input_rest: float | None = None) -> None:
        self.gm, self.T = gm, int(T)
        self.energy = energy or EnergyModel()
        self.samples = 0
        modules = dict(gm.named_modules())
        memo: dict[fx.Node, bool] = {}
        self.layers: dict[str, _LayerCount] = {}
        self.neurons: dict[str, _NeuronCount] = {}
        self.dense: dict[str, _DenseCount] = {}
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            m, rec = modules[node.target], record_for(node, modules)
            if rec is None or node.target in self.layers or node.target in self.neurons:
                continue
            if rec.accounting.synapses is not None:
                # input_rest (rate-coded input): the layers that see the input receive spikes too, not analog values
                analog = input_rest is None and not _has_stateful_ancestor(node, modules, memo)
                self.layers[node.target] = _LayerCount(node.target, m, rec.accounting.synapses, analog, self.T,
                                                       _multibit_unit(node, modules))
                if input_rest is not None and node.args and getattr(node.args[0], "op", None) == "placeholder":
                    self.layers[node.target].rest = float(input_rest)
            elif rec.accounting.neuron:
                self.neurons[node.target] = _NeuronCount(node.target, m.kind, self.T, getattr(m, "spike_counts", None)
                                                         if getattr(m, "max_spikes", 1) > 1 else None)
            elif rec.accounting.dense is not None:
                self.dense[node.target] = _DenseCount(node.target, m, rec.accounting.dense)

    def add_samples(self, n: int) -> None:
        """Count ``n`` more samples (call once per batch run)."""
        self.samples += int(n)

    @torch.no_grad()
    def __call__(self, node: fx.Node, inputs: list[torch.Tensor], output: torch.Tensor) -> None:
        """The simulator's observer: every tensor is ``[T, B, ...]``."""
        if node.op != "call_module":
            return
        if node.target in self.dense:
            d = self.dense[node.target]
            if d.macs is None:
                d.macs = int(d.rule(d.module, [tuple(x.shape[2:]) for x in inputs], tuple(output.shape[2:])))
            return
        if node.target in self.neurons:
            rec = self.neurons[node.target]
            if rec.neurons is None:
                rec.neurons = output[0, 0].numel()
            hits = (output != 0) if rec.counter is None else rec.counter(output)
            rec.spikes += hits.flatten(2).sum((1, 2), dtype=torch.float64).cpu()
        elif node.target in self.layers:
            rec = self.layers[node.target]
            x = inputs[0]
            if rec.macs is None:
                rec.macs = math.prod(int(s) for s in output.shape[2:]) * rec.fan_in
                rec.inputs = x[0, 0].numel()
            if rec.analog:  # a step costs MACs when the batch's input at that step is nonzero
                rec.active += (x.flatten(1) != 0).any(1).to(torch.float64).cpu() * x.shape[1]
                return
            if rec._fanout is None:
                rec._fanout = fanout_map(rec.module, tuple(x.shape[2:]))
            hits = (x != rec.rest) if rec.unit is None else torch.ceil(x.abs() / rec.unit - 1e-4).clamp(min=0)
            events = hits.sum(1, dtype=torch.float64)  # [T, ...]: events per input position, summed over B
            rec.events += events.flatten(1).sum(1).cpu()
            rec.sops += (events * rec._fanout.to(events.device)).flatten(1).sum(1).cpu()

    # --- results --------------------------------------------------------------------------------------
    def firing_rates(self, Ts: list[int]) -> list[dict[str, Any]]:
        """Per neuron layer: spikes per neuron per step over the first T steps, for each T in ``Ts``."""
        self._check(Ts)
        out = []
        for rec in self.neurons.values():
            cum = torch.cumsum(rec.spikes, 0)
            denom = max(1, self.samples) * (rec.neurons or 1)
            out.append({"name": rec.name, "kind": rec.kind, "neurons": rec.neurons or 0,
                        "rates": [float(cum[t - 1]) / (denom * t) for t in Ts],
                        "spikes_per_sample": [float(cum[t - 1]) / max(1, self.samples) for t in Ts]})
        return out

    def summary(self, Ts: list[int]) -> dict[str, Any]:
        """Per-layer MACs and SOPs, totals and energy at each T in ``Ts`` (all per sample)."""
        self._check(Ts)
        n = max(1, self.samples)
        e = self.energy
        layers, ann_macs = [], 0
        sops_total = torch.zeros(self.T, dtype=torch.float64)
        analog_total = torch.zeros(self.T, dtype=torch.float64)  # analog MACs per step, per sample
        for rec in self.layers.values():
            macs = rec.macs or 0
            ann_macs += macs
            row = {"name": rec.name, "kind": rec.kind, "analog_input": rec.analog, "macs": macs,
                   "fan_in": rec.fan_in, "inputs": rec.inputs}
            if rec.analog:
                per_step = rec.active / n * macs if e.analog_per_step else torch.zeros(self.T, dtype=torch.float64)
                if not e.analog_per_step and self.T:
                    per_step[0] = macs
                analog_total += per_step
                cum = torch.cumsum(per_step, 0)
                row["snn_macs"] = [_number(cum[t - 1]) for t in Ts]
                row["sops"] = [0.0 for _ in Ts]
            else:
                cum = torch.cumsum(rec.sops, 0) / n
                sops_total += rec.sops / n
                row["snn_macs"] = [0 for _ in Ts]
                row["sops"] = [float(cum[t - 1]) for t in Ts]
                row["events"] = [float(torch.cumsum(rec.events, 0)[t - 1]) / n for t in Ts]
            layers.append(row)
        for d in self.dense.values():  # computed on values at every step: MACs, in the SNN as in the ANN
            if not d.macs:
                continue
            ann_macs += d.macs
            analog_total += d.macs
            layers.append({"name": d.name, "kind": d.kind, "analog_input": True, "dense": True, "macs": d.macs,
                           "snn_macs": [d.macs * t for t in Ts], "sops": [0.0 for _ in Ts]})
        cum_sops = torch.cumsum(sops_total, 0)
        cum_analog = torch.cumsum(analog_total, 0)
        ann_energy = ann_macs * e.e_mac_pj
        per_t = []
        for t in Ts:
            snn_macs = _number(cum_analog[t - 1])
            sops = float(cum_sops[t - 1])
            snn_energy = snn_macs * e.e_mac_pj + sops * e.e_ac_pj
            per_t.append({"T": t, "snn_macs": snn_macs, "sops": sops, "snn_energy_pj": snn_energy,
                          "ann_energy_pj": ann_energy, "ratio": snn_energy / ann_energy if ann_energy else None})
        return {"constants": asdict(e), "samples": self.samples, "ann_macs": ann_macs,
                "ann_energy_pj": ann_energy, "layers": layers, "per_T": per_t}

    def _check(self, Ts: list[int]) -> None:
        bad = [t for t in Ts if not 1 <= t <= self.T]
        if bad:
            raise Ann2SnnError(f"T values {bad} lie outside the recorded 1..{self.T} steps; record with T={max(Ts)}")


def _number(v: torch.Tensor) -> int | float:
    """An exact count as an int, a mean over samples that is not whole as a float."""
    f = float(v)
    return int(f) if f.is_integer() else f


#: ops a multi-bit spike passes through on its way to a weighted layer (they move or pool spikes, add nothing)
_SPIKE_CARRIERS = ("pool", "flatten", "reshape", "layout", "identity")


def _multibit_unit(node: fx.Node, modules: dict[str, nn.Module]) -> float | None:
    """The value of one spike when ``node``'s input comes from a multi-bit neuron (D > 1) through pooling, flatten
    or layout ops only; None otherwise (every nonzero input is then one event)."""
    from ann2snn.ops import kind_of

    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    while src is not None and kind_of(src, modules) != "stateful":
        if kind_of(src, modules) not in _SPIKE_CARRIERS or not src.args or not isinstance(src.args[0], fx.Node):
            return None
        src = src.args[0]
    m = modules.get(src.target) if src is not None else None
    if m is None or getattr(m, "max_spikes", 1) <= 1:
        return None
    return float(m.threshold.min())
