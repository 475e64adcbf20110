"""Bring a traced QANN into the canonical form the other passes match on.

- modules called from several places are copied, so folding one call site cannot change another;
- every operator with a ``rewrite`` in its record is rewritten: dropout (eval), identity and ``contiguous``
  disappear, ``view`` / ``reshape`` that flatten trailing dims become ``torch.flatten``, ``F.max_pool2d``
  becomes an ``nn.MaxPool2d`` module, a ReLU on a non-negative value is dropped (any other ReLU is an error);
- every remaining node must have an operator record, or this pass says which does not.

Non-negativity follows each record's :class:`~ann2snn.ops.Sign`: an unsigned quantizer's output is
non-negative, pooling / flatten / ``+`` / ``cat`` keep it, anything else (a signed quantizer included) may be
negative.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from ann2snn.errors import ConversionError, UnsupportedNodeError
from ann2snn.ops import REGISTRY, Fold, Sign, Spiking, record_for
from ann2snn.passes.graph import PassResult, finish, modules_of, set_module, tensor_inputs, unique_name

_SUPPORTED = ", ".join(r.name for r in REGISTRY if r.spiking not in (Spiking.STRUCTURAL, Spiking.STATEFUL))
_FIXES = {
    "call_module": "replace it with ann2snn.layers.QCFS if it is an activation, or with a supported linear layer",
    "call_function": f"express it with supported ops ({_SUPPORTED})",
    "call_method": f"express it with supported ops ({_SUPPORTED})",
    "get_attr": "use parameters only inside nn.Conv2d / nn.Linear / BatchNorm modules",
}


def normalize(gm: fx.GraphModule) -> PassResult:
    """Canonicalize ``gm`` in place (see the module docstring); raises on anything unsupported."""
    rewrites = [r.rewrite for r in REGISTRY if r.rewrite is not None and r.rewrite.counter]
    changes = {"unshared": _unshare_modules(gm), **{rw.counter: 0 for rw in rewrites}}
    modules = modules_of(gm)
    records = {n: record_for(n, modules) for n in gm.graph.nodes}
    for node, rec in records.items():
        if rec is None:
            _raise_unsupported(node, modules)
    if not any(rec.fold is Fold.QUANTIZER for rec in records.values()):
        raise ConversionError(
            "model has no QCFS activation, so it is not a QANN: replace its ReLUs with ann2snn.layers.QCFS "
            "and fine-tune (see README, 'Make a QANN'), then convert"
        )
    nonneg: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        rec = records[node]
        if rec.rewrite is not None:
            new = rec.rewrite.apply(gm, node, nonneg)
            if new is not node and rec.rewrite.counter:
                changes[rec.rewrite.counter] += 1
            if new is None:
                continue
            if new is not node:
                if new.op == "call_module":
                    modules[new.target] = gm.get_submodule(new.target)
                node, rec = new, record_for(new, modules)
        inputs = tensor_inputs(node)
        if rec.sign is Sign.NONNEG or (rec.sign is Sign.PRESERVE and inputs and all(i in nonneg for i in inputs)):
            nonneg.add(node)
    counters = {rw.counter: changes[rw.counter] for rw in rewrites if rw.headline}
    return PassResult(finish(gm), changes, counters)


def _unshare_modules(gm: fx.GraphModule) -> int:
    seen: set[str] = set()
    copied = 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        if node.target in seen:
            m = gm.get_submodule(node.target)
            if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                name = unique_name(gm, node.target)
                set_module(gm, name, copy.deepcopy(m))
                node.target = name
                copied += 1
        seen.add(node.target)
    return copied


def _raise_unsupported(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    if node.op == "call_module":
        what = type(modules[node.target]).__name__
        reason = f"{what} has no spiking equivalent in ann2snn; {_FIXES['call_module']}"
    else:
        name = getattr(node.target, "__name__", str(node.target))
        reason = f"{node.op} {name!r} has no spiking equivalent in ann2snn; {_FIXES[node.op]}"
    raise UnsupportedNodeError(node, reason)
