"""Small torch.fx helpers that operator rules and passes share (no knowledge of any operator here)."""

from __future__ import annotations

import torch
from torch import fx, nn

__all__ = ["is_tensor", "shape_of", "tensor_inputs", "modules_of", "set_module", "unique_name", "replace_node",
           "apply_node", "index_map"]


def is_tensor(node: fx.Node) -> bool:
    """True when the node produces a tensor (per the shape meta written by ShapeProp)."""
    return "tensor_meta" in node.meta and hasattr(node.meta["tensor_meta"], "shape")


def shape_of(node: fx.Node) -> torch.Size:
    return node.meta["tensor_meta"].shape


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The node's tensor-valued inputs, in argument order (``cat`` lists flattened)."""
    out = []
    for a in node.args:
        items = a if isinstance(a, (list, tuple)) else (a,)
        out += [x for x in items if isinstance(x, fx.Node) and is_tensor(x)]
    return out


def modules_of(gm: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(gm.named_modules())


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Put ``module`` at qualified name ``target``, creating nothing but the last attribute."""
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, module)


def unique_name(gm: fx.GraphModule, base: str) -> str:
    names = dict(gm.named_modules())
    base = base.replace(".", "_")
    if base not in names:
        return base
    i = 1
    while f"{base}_{i}" in names:
        i += 1
    return f"{base}_{i}"


def replace_node(gm: fx.GraphModule, node: fx.Node, op: str, target, args: tuple) -> fx.Node:
    """A new ``op``/``target`` node with ``args`` in place of ``node`` (same meta, same users); ``node`` is erased."""
    with gm.graph.inserting_after(node):
        new = gm.graph.create_node(op, target, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def apply_node(node: fx.Node, value: torch.Tensor, modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
    """``node``'s own operation applied to ``value`` in place of its first input; every other argument must be a
    constant (a ``ValueError`` otherwise). How scales and index maps move through layout ops."""
    rest = node.args[1:]
    if _has_node(rest) or _has_node(node.kwargs):
        raise ValueError(f"{node.name} takes a computed argument")
    args = (value, *rest)
    if node.op == "call_module":
        return modules[node.target](*args, **node.kwargs)
    if node.op == "call_function":
        return node.target(*args, **node.kwargs)
    return getattr(value, node.target)(*rest, **node.kwargs)


def _has_node(a) -> bool:
    found = []
    fx.node.map_arg(a, lambda n: found.append(n))
    return bool(found)


def index_map(node: fx.Node, in_shape, modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
    """For a layout op (moves elements only): which input element of one sample each output element is, as a flat
    int64 tensor over the output sample (``in_shape``: the per-sample input shape)."""
    idx = torch.arange(int(torch.Size(in_shape).numel()), dtype=torch.int64).reshape(1, *in_shape)
    return apply_node(node, idx, modules).reshape(-1)
