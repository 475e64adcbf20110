"""Bring a traced QANN into the canonical form the other passes match on.

- modules called from several places are copied, so folding one call site cannot change another;
- dropout (eval), identity, ``contiguous`` disappear;
- ``view`` / ``reshape`` that flatten trailing dims become ``torch.flatten``;
- ``F.max_pool2d`` becomes an ``nn.MaxPool2d`` module;
- a ReLU on a non-negative value (after QCFS) is dropped; any other ReLU is an error;
- every remaining node must be of a kind the converter understands, or this pass says which is not.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import fx, nn

from ann2snn.errors import ConversionError, UnsupportedNodeError
from ann2snn.passes.graph import classify, finish, modules_of, set_module, shape_of, tensor_inputs, unique_name

_NONNEG_PRESERVING = ("pool", "maxpool", "flatten", "reshape", "cat", "add", "relu", "identity")

_FIXES = {
    "call_module": "replace it with ann2snn.layers.QCFS if it is an activation, or with a supported linear layer",
    "call_function": "express it with supported ops (conv, linear, BN, QCFS, avg/max pool, flatten, +, cat)",
    "call_method": "express it with supported ops (conv, linear, BN, QCFS, avg/max pool, flatten, +, cat)",
    "get_attr": "use parameters only inside nn.Conv2d / nn.Linear / BatchNorm modules",
}


def normalize(gm: fx.GraphModule, *, record: dict | None = None) -> fx.GraphModule:
    """Canonicalize ``gm`` in place (see the module docstring); raises on anything unsupported."""
    rec = record if record is not None else {}
    rec.update(unshared=0, identities_removed=0, reshapes_to_flatten=0, relus_removed=0, maxpool_functions=0)
    _unshare_modules(gm, rec)
    modules = modules_of(gm)
    kinds = {n: classify(n, modules) for n in gm.graph.nodes}
    for node, kind in kinds.items():
        if kind == "unsupported":
            _raise_unsupported(node, modules)
    if not any(k == "qcfs" for k in kinds.values()):
        raise ConversionError(
            "model has no QCFS activation, so it is not a QANN: replace its ReLUs with ann2snn.layers.QCFS "
            "and fine-tune (see README, 'Make a QANN'), then convert"
        )
    nonneg: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        kind = kinds[node]
        if kind == "identity":
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            rec["identities_removed"] += 1
            continue
        if kind == "reshape":
            node = _reshape_to_flatten(gm, node)
            kinds[node] = "flatten"
            rec["reshapes_to_flatten"] += 1
        elif kind == "maxpool" and node.op == "call_function":
            node = _maxpool_function_to_module(gm, node)
            kinds[node] = "maxpool"
            rec["maxpool_functions"] += 1
        elif kind == "add":
            _check_add(node)
        elif kind == "relu":
            src = node.args[0]
            if src not in nonneg:
                raise UnsupportedNodeError(
                    node, "this ReLU is not a QCFS activation and its input can be negative; replace it with "
                    "ann2snn.layers.QCFS and fine-tune the model"
                )
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            rec["relus_removed"] += 1
            continue
        if kind in ("qcfs", "stateful"):
            nonneg.add(node)
        elif kind in _NONNEG_PRESERVING and tensor_inputs(node) and all(i in nonneg for i in tensor_inputs(node)):
            nonneg.add(node)
    return finish(gm)


def _unshare_modules(gm: fx.GraphModule, rec: dict) -> None:
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        if node.target in seen:
            m = gm.get_submodule(node.target)
            if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                name = unique_name(gm, node.target)
                set_module(gm, name, copy.deepcopy(m))
                node.target = name
                rec["unshared"] += 1
        seen.add(node.target)


def _raise_unsupported(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    if node.op == "call_module":
        what = type(modules[node.target]).__name__
        reason = f"{what} has no spiking equivalent in ann2snn; {_FIXES['call_module']}"
    else:
        name = getattr(node.target, "__name__", str(node.target))
        reason = f"{node.op} {name!r} has no spiking equivalent in ann2snn; {_FIXES[node.op]}"
    raise UnsupportedNodeError(node, reason)


def _reshape_to_flatten(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    src = node.args[0]
    sin, sout = shape_of(src), shape_of(node)
    start = len(sout) - 1
    if not (len(sout) <= len(sin) and tuple(sin[:start]) == tuple(sout[:start])
            and math.prod(sin[start:]) == sout[-1] and start >= 1):
        raise UnsupportedNodeError(
            node, f"reshape {tuple(sin)} -> {tuple(sout)} is not a flatten of trailing dims; only flattening "
            "reshapes are supported in CNNs: use torch.flatten(x, 1)"
        )
    with gm.graph.inserting_after(node):
        new = gm.graph.call_function(torch.flatten, (src, start))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _maxpool_function_to_module(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    kw = dict(zip(names, node.args[1:]))
    kw.update(node.kwargs)
    if kw.get("return_indices"):
        raise UnsupportedNodeError(node, "max-pool with return_indices cannot be converted; drop return_indices")
    name = unique_name(gm, "maxpool")
    set_module(gm, name, nn.MaxPool2d(**kw))
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node.args[0],))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _check_add(node: fx.Node) -> None:
    args = [a for a in node.args if a is not None]
    if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args) or node.kwargs.get("alpha", 1) != 1:
        raise UnsupportedNodeError(
            node, "only the sum of two tensors is supported (no constants, no alpha); fold constants into a bias"
        )
    if shape_of(args[0]) != shape_of(args[1]):
        raise UnsupportedNodeError(
            node, f"adding shapes {tuple(shape_of(args[0]))} and {tuple(shape_of(args[1]))} relies on broadcasting; "
            "expand the smaller operand explicitly"
        )


