"""One record per operator, read by every stage (passes, energy, the exporters' kind lookup).

Examples:
    >>> from ann2snn.ops import record_for, REGISTRY
    >>> rec = record_for(node, dict(gm.named_modules()))
    >>> rec.kind, rec.fold, rec.spiking
    ('linear', <Fold.ABSORB: 'absorb'>, <Spiking.STATELESS: 'stateless'>)

Adding an operator = its class, its record (:mod:`ann2snn.ops.records`), its exporter builder; see
docs/design.md, "Operator registry".
"""

from ann2snn.ops.base import Accounting, Fold, OpRecord, Rewrite, ScaleRule, Sign, Spiking, SpikingOptions, Synapses
from ann2snn.ops.records import BN_FOLD_PATTERNS
from ann2snn.ops.registry import (
    KINDS,
    RECORDS,
    REGISTRY,
    kind_of,
    record_for,
    record_for_module,
    stateful_kinds,
    stateless_kinds,
)

__all__ = ["OpRecord", "Fold", "Sign", "Spiking", "Rewrite", "ScaleRule", "Synapses", "Accounting", "SpikingOptions",
           "REGISTRY", "RECORDS", "KINDS", "BN_FOLD_PATTERNS", "record_for", "record_for_module", "kind_of",
           "stateless_kinds", "stateful_kinds"]
