"""The record types: what ann2snn knows about one operator, as data.

An :class:`OpRecord` says how to recognise the operator in a traced graph (its fx patterns), what it does in
threshold folding (:class:`Fold`), whether its output is non-negative (:class:`Sign`), what becomes of it in the
spiking network (:class:`Spiking`, with the replacement function), and how it is accounted (:class:`Accounting`).
Every stage (normalize, fold_batchnorm, fold_thresholds, to_spiking, energy, the exporters' kind lookup) reads
these records instead of keeping its own ``if kind == ...`` ladder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import torch
from torch import fx, nn

__all__ = ["Fold", "Sign", "Spiking", "Rewrite", "ScaleRule", "Synapses", "Accounting", "SpikingOptions",
           "OpRecord"]


class Fold(str, Enum):
    """An operator's role in threshold folding (``actual = scale ⊙ stored`` is tracked for every value)."""

    #: a value of scale 1 that cannot be rescaled (the network input, shape arithmetic)
    SOURCE = "source"
    #: a weighted linear op: takes its input's scale into its weight columns, rescales its output by its rows
    ABSORB = "absorb"
    #: a per-channel scale passes through unchanged (pooling); a request passes back to its input
    COMMUTE = "commute"
    #: moves elements only: the scale moves with them (the op applied to the scale), a request passes back reshaped
    RESHAPE = "reshape"
    #: ``a + b``: both operands are brought to one scale, by rescaling whichever side can be
    JOIN_ADD = "join-add"
    #: concatenation: the scales concatenate along the same dim (along the batch dim they must be 1)
    JOIN_CAT = "join-cat"
    #: a threshold quantizer: wants its input in threshold units, outputs values of scale θ, becomes its unit form
    QUANTIZER = "quantizer"
    #: the network output: wants scale 1
    SINK = "sink"
    #: a non-linear op on values (product, softmax, LayerNorm, class token): wants every input at scale 1,
    #: outputs scale 1
    OPAQUE = "opaque"
    #: must be gone before folding runs (BatchNorm, ReLU, identities) or is already spiking
    BARRIER = "barrier"


class Sign(str, Enum):
    """What ``normalize`` may assume about an operator's output (a ReLU on a non-negative value is dropped)."""

    NONNEG = "nonneg"        # never negative (an unsigned quantizer, an IF neuron)
    PRESERVE = "preserve"    # non-negative when every tensor input is (pooling, flatten, +, cat)
    SIGNED = "signed"        # may be negative


class Spiking(str, Enum):
    """What becomes of an operator in the spiking network."""

    STATELESS = "stateless"    # kept as it is; exported by ``exporters.common.STATELESS[kind]``
    STATEFUL = "stateful"      # a spiking operator; exported by ``exporters.common.STATEFUL[stateful_kind]``
    REPLACED = "replaced"      # ``to_spiking`` swaps it for a stateful operator (``OpRecord.replace``)
    REWRITTEN = "rewritten"    # normalize / fold_batchnorm rewrite it away before conversion
    STRUCTURAL = "structural"  # graph input, output, shape arithmetic


@dataclass(frozen=True)
class Rewrite:
    """``normalize``'s canonical form of an operator.

    ``apply(gm, node, nonneg) -> node | None`` rewrites ``node`` in place and returns the node now standing for
    it (``node`` itself when nothing changed, None when it was removed); ``nonneg`` is the set of nodes known to
    be non-negative so far. Each change is counted under ``counter``; ``headline`` counters also appear in
    :meth:`ann2snn.passes.ConversionReport.counts`.
    """

    apply: Callable[[fx.GraphModule, fx.Node, set], fx.Node | None]
    counter: str | None = None
    headline: bool = False


@dataclass(frozen=True)
class ScaleRule:
    """How a weighted op (:attr:`Fold.ABSORB`) takes a scale into its weights.

    - ``absorb_input(m, s, in_shape) -> bool``: its input now arrives multiplied by ``s``; change the weights so
      the output is unchanged. False when ``s`` varies along a dim the weights cannot absorb.
    - ``scale_output(m, r, out_shape) -> bool``: multiply its output by ``r`` (weights and bias). False when it
      cannot (then an explicit scale is inserted).
    - ``add_bias(m, b)``: add ``b`` (one value per output channel) to its bias, creating one if needed.
    """

    absorb_input: Callable[[nn.Module, Any, torch.Size], bool]
    scale_output: Callable[[nn.Module, Any, torch.Size], bool]
    add_bias: Callable[[nn.Module, torch.Tensor], None]


@dataclass(frozen=True)
class Synapses:
    """The synaptic-operation rule of a weighted layer.

    MACs per sample = output elements × ``fan_in(m)``; SOPs at a step = Σ over input elements of
    ``[x ≠ 0] · fan-out``, the fan-out map being the input gradient of ``ones(m, x).sum()`` (``m`` with every
    weight 1 and no bias), exact per position (borders, strides, groups).
    """

    fan_in: Callable[[nn.Module], int]
    ones: Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Accounting:
    """How an operator is counted.

    - ``synapses``: a weighted layer (MACs in the ANN, synaptic operations in the SNN); None: not counted.
    - ``neuron``: a neuron layer — every nonzero output is one spike event (±1 and ±θ_n alike).
    - ``report_list`` / ``counter``: for spiking operators, the ``to_spiking`` changes list they are listed in and
      the headline count (:meth:`~ann2snn.passes.ConversionReport.counts`) they add to.
    - ``dense(m, in_shapes, out_shape) -> MACs`` per sample of an op computed densely on values (the attention
      products Q·Kᵀ and attn·V): MACs in the ANN, and MACs at *every step* in the SNN (the compensated product
      multiplies running sums, not spikes) — or 0 for an op without multiply-accumulates.
    """

    synapses: Synapses | None = None
    dense: Callable[[nn.Module, list, tuple], int] | None = None
    neuron: bool = False
    report_list: str | None = None
    counter: str | None = None


@dataclass(frozen=True)
class SpikingOptions:
    """What ``to_spiking`` was asked for: the time convention, the schedule length, what to do with max-pool."""

    convention: str = "rate"
    schedule_length: int | None = None
    maxpool: str = "spiking"
    #: D > 1: unsigned quantizers become multi-bit neurons (up to D spikes a step; rate convention)
    max_spikes: int = 1


@dataclass(frozen=True)
class OpRecord:
    """Everything ann2snn knows about one operator.

    Patterns (data, matched by :func:`ann2snn.ops.record_for`): ``modules`` (classes; the most derived record
    wins), ``functions`` (``call_function`` targets), ``methods`` (``call_method`` names), ``opcodes`` (fx
    opcodes matched whatever the target: ``placeholder``, ``output``); ``when(node)`` narrows a function or
    method match (``x.size()[0]`` is shape arithmetic, other ``getitem`` is not).

    ``kind`` is the node kind the exporters' tables are keyed by (``linear``, ``qcfs``, ``stateful``, …); several
    records may share one. ``stateful_kind`` is ``StatefulModule.kind`` for spiking operators.
    ``replace(module, node, options) -> (spiking module, report details)`` for :attr:`Spiking.REPLACED`.
    ``affine_form(m) -> (scale, shift)`` for a per-channel affine op that folds into a producer listed in
    ``fuses_after`` (``(producer class, this class)`` pairs), as BatchNorm does.
    """

    name: str
    kind: str
    modules: tuple[type, ...] = ()
    functions: tuple[Callable, ...] = ()
    methods: tuple[str, ...] = ()
    opcodes: tuple[str, ...] = ()
    when: Callable[[fx.Node], bool] | None = None
    fold: Fold = Fold.BARRIER
    sign: Sign = Sign.SIGNED
    rewrite: Rewrite | None = None
    scale: ScaleRule | None = None
    affine_form: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]] | None = None
    fuses_after: tuple[tuple[type, type], ...] = ()
    spiking: Spiking = Spiking.STATELESS
    replace: Callable[[nn.Module, fx.Node, SpikingOptions], tuple[nn.Module, dict]] | None = None
    stateful_kind: str | None = None
    accounting: Accounting = Accounting()

    def __post_init__(self) -> None:
        if (self.spiking is Spiking.REPLACED) != (self.replace is not None):
            raise ValueError(f"op record {self.name!r}: a replace function goes with spiking=REPLACED, and only there")
        if (self.spiking is Spiking.STATEFUL) != (self.stateful_kind is not None):
            raise ValueError(f"op record {self.name!r}: stateful_kind goes with spiking=STATEFUL, and only there")
        if (self.fold is Fold.ABSORB) != (self.scale is not None):
            raise ValueError(f"op record {self.name!r}: a scale rule goes with fold=ABSORB, and only there")
        if not (self.modules or self.functions or self.methods or self.opcodes):
            raise ValueError(f"op record {self.name!r} has no pattern")
