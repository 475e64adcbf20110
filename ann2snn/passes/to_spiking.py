"""Replace every operator whose record says ``Spiking.REPLACED`` by its spiking operator, from the table.

QCFS-family quantizers become the neuron of the time convention (``rate``: IF, or an unbounded bipolar neuron
for a signed quantizer; ``exact``: a bounded bipolar neuron); max-pool becomes a max on accumulated counts, or is
refused. Each replaced node gets its own module (neurons hold state, so call sites never share one) and is
listed in the report under its spiking operator's ``report_list``, counted under its ``counter``.
"""

from __future__ import annotations

from torch import fx

from ann2snn.errors import Ann2SnnError, ConversionError
from ann2snn.ops import REGISTRY, Fold, Spiking, SpikingOptions, record_for, record_for_module
from ann2snn.passes.graph import PassResult, finish, modules_of, set_module, shape_of, unique_name

CONVENTIONS = ("rate", "exact")
MAXPOOL_MODES = ("spiking", "error")


def to_spiking(gm: fx.GraphModule, *, convention: str = "rate", schedule_length: int | None = None,
               maxpool: str = "spiking", max_spikes: int = 1) -> PassResult:
    """Swap each replaceable node of ``gm`` for its spiking operator (in place).

    Args:
        convention: ``"rate"`` (IF neurons, input every step) or ``"exact"`` (bounded bipolar neurons, input for
            the first L steps; DESIGN §2b).
        schedule_length: the exact schedule's length L_s; default: the largest L of the graph's quantizers.
            A layer with L levels then gets threshold ``θ·L_s/L`` so layers of different L mix exactly.
        maxpool: ``"spiking"`` (max on accumulated counts) or ``"error"`` (refuse, naming the node and the fix).
        max_spikes: D > 1 makes unsigned quantizers multi-bit neurons (up to D spikes a step; rate convention).

    After :func:`fold_thresholds` every neuron has θ = 1; on an unfolded graph each gets its quantizer's θ.
    """
    if convention not in CONVENTIONS:
        raise Ann2SnnError(f"convention must be 'rate' or 'exact', got {convention!r}")
    if maxpool not in MAXPOOL_MODES:
        raise Ann2SnnError(f"maxpool must be 'spiking' or 'error', got {maxpool!r}")
    if schedule_length is not None and (not isinstance(schedule_length, int) or schedule_length <= 0):
        raise Ann2SnnError(f"schedule_length must be a positive number of steps, got {schedule_length!r}")
    modules = modules_of(gm)
    records = {n: record_for(n, modules) for n in gm.graph.nodes}
    if convention == "exact" and schedule_length is None:
        levels = [modules[n.target].levels for n, r in records.items() if r is not None and r.fold is Fold.QUANTIZER]
        schedule_length = max(levels, default=None)
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1:
        raise Ann2SnnError(f"max_spikes must be an integer >= 1, got {max_spikes!r}")
    options = SpikingOptions(convention=convention, schedule_length=schedule_length, maxpool=maxpool,
                             max_spikes=max_spikes)
    spiking = [r for r in REGISTRY if r.spiking is Spiking.STATEFUL]
    lists: dict[str, list] = {r.accounting.report_list: [] for r in spiking if r.accounting.report_list}
    counters: dict[str, int] = {r.accounting.counter: 0 for r in spiking if r.accounting.counter}
    todo = [(node, rec) for node, rec in records.items() if rec is not None and rec.replace is not None]
    for node, _ in todo:
        if node.op != "call_module":  # checked before anything changes
            raise ConversionError(f"to_spiking replaces modules, but {node.format_node()} is a {node.op}; run "
                                  "normalize first")
    used: set[str] = set()
    for node, rec in todo:
        new, details = rec.replace(modules[node.target], node, options)
        new_rec = record_for_module(new)
        if new_rec is None or new_rec.spiking is not Spiking.STATEFUL:
            raise ConversionError(f"the {rec.name} record's replacement {type(new).__name__} has no spiking "
                                  "operator record; add one to ann2snn.ops.records")
        name = node.target if node.target not in used else unique_name(gm, node.target)
        used.add(name)
        set_module(gm, name, new)
        node.target = name
        entry = {"node": name, "kind": new.kind, **details, "state_shape": list(shape_of(node)[1:])}
        acc = new_rec.accounting
        if acc.report_list:
            lists[acc.report_list].append(entry)
        if acc.counter:
            counters[acc.counter] += 1
    changes = {"convention": convention, "schedule_length": schedule_length, **lists}
    return PassResult(finish(gm), changes, counters)
