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

import torch
from torch import fx, nn

from ann2snn.errors import ConversionError, UnsupportedNodeError
from ann2snn.ops import REGISTRY, Fold, Sign, Spiking, record_for
from ann2snn.passes.graph import PassResult, finish, modules_of, set_module, tensor_inputs, unique_name
from ann2snn.passes.shape_arith import resolve_shape_arithmetic

_SUPPORTED = ", ".join(r.name for r in REGISTRY if r.spiking not in (Spiking.STRUCTURAL, Spiking.STATEFUL))
_FIXES = {
    "call_module": "replace it with ann2snn.layers.QCFS if it is an activation, or with a supported linear layer",
    "call_function": f"express it with supported ops ({_SUPPORTED})",
    "call_method": f"express it with supported ops ({_SUPPORTED})",
    "get_attr": "use parameters inside modules, in x + P / x * P, or through ann2snn.layers.ClassToken",
}


def normalize(gm: fx.GraphModule) -> PassResult:
    """Canonicalize ``gm`` in place (see the module docstring); raises on anything unsupported."""
    resolve_shape_arithmetic(gm)  # x.shape[i], x.size(i): numbers; the batch size -1 (passes/shape_arith.py)
    rewrites = list({rw.counter: rw for r in REGISTRY if (rw := r.rewrite) is not None and rw.counter}.values())
    changes = {"unshared": _unshare_modules(gm), "constants_folded": fold_constants(gm),
               **{rw.counter: 0 for rw in rewrites}}
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
        if getattr(node, "_erased", False):
            continue
        rec = record_for(node, modules)  # a rewrite may have changed the node (split pieces become slices)
        if rec is None:
            _raise_unsupported(node, modules)
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
    _check_constants(gm)
    counters = {rw.counter: changes[rw.counter] for rw in rewrites if rw.headline}
    return PassResult(finish(gm), changes, counters)


def fold_constants(gm: fx.GraphModule) -> int:
    """Evaluate every expression of parameters and buffers alone (``self.table[self.index].permute(2, 0, 1)``)
    once and store its value as a buffer read by one ``get_attr`` node; returns how many were stored.

    What is left of a constant is then an operand of ``+`` / ``*`` (it becomes an Affine) or an error."""
    const: dict[fx.Node, object] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            v = gm
            for part in n.target.split("."):
                v = getattr(v, part)
            const[n] = v
        elif n.op in ("call_function", "call_method", "call_module") and n.all_input_nodes \
                and all(a in const for a in n.all_input_nodes):
            args = fx.node.map_arg(n.args, lambda a: const[a])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: const[a])
            with torch.no_grad():
                if n.op == "call_function":
                    const[n] = n.target(*args, **kwargs)
                elif n.op == "call_method":
                    const[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
                else:
                    const[n] = gm.get_submodule(n.target)(*args, **kwargs)
    frontier = [n for n in const if n.op != "get_attr" and isinstance(const[n], torch.Tensor)
                and any(u not in const for u in n.users)]
    for n in frontier:
        name = unique_name(gm, f"const_{n.name}")
        gm.register_buffer(name, const[n].detach().clone())
        with gm.graph.inserting_before(n):
            g = gm.graph.get_attr(name)
        g.meta = dict(n.meta)
        n.replace_all_uses_with(g)
    for n in reversed(list(const)):
        if not n.users:
            gm.graph.erase_node(n)
    return len(frontier)


def _check_constants(gm: fx.GraphModule) -> None:
    """A parameter or buffer still read directly is used by an op that cannot take a constant."""
    for n in gm.graph.nodes:
        if n.op == "get_attr" and n.users:
            user = next(iter(n.users))
            raise UnsupportedNodeError(user, f"it uses the parameter/buffer {n.target!r} directly, which only "
                                       "x + P, x * P and class tokens (ann2snn.layers.ClassToken) support; move it "
                                       "into a module (nn.Linear, ...)")


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
        reason = f"it has no spiking equivalent in ann2snn; {_FIXES[node.op]}"
    raise UnsupportedNodeError(node, reason)
