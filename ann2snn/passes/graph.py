"""What the passes know about graph nodes: patterns as data, one classifier, and small graph helpers."""

from __future__ import annotations

import operator

import torch
from torch import fx, nn
from torch.nn import functional as F

from ann2snn.layers import QCFS, Affine
from ann2snn.neurons import StatefulModule

# --- patterns (data, overridable by keyword in the passes that use them) -------------------------------
LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)
BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
BN_FOLD_PATTERNS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv1d, nn.BatchNorm1d), (nn.Linear, nn.BatchNorm1d))
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
MAXPOOL_MODULES = (nn.MaxPool2d,)
RELU_MODULES = (nn.ReLU,)

IDENTITY_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, torch.nn.functional.alpha_dropout)
IDENTITY_METHODS = ("contiguous", "clone", "detach")
POOL_FUNCTIONS = (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.mean)
POOL_METHODS = ("mean",)
MAXPOOL_FUNCTIONS = (F.max_pool2d,)
RELU_FUNCTIONS = (F.relu, torch.relu)
RELU_METHODS = ("relu",)
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add",)
CAT_FUNCTIONS = (torch.cat, torch.concat)
FLATTEN_FUNCTIONS = (torch.flatten,)
FLATTEN_METHODS = ("flatten",)
RESHAPE_FUNCTIONS = (torch.reshape,)
RESHAPE_METHODS = ("view", "reshape")
SIZE_METHODS = ("size", "dim")

#: Kinds a converted graph may contain. ``neuron`` covers every StatefulModule.
KINDS = ("input", "output", "linear", "bn", "affine", "qcfs", "stateful", "pool", "maxpool", "relu",
         "identity", "add", "cat", "flatten", "reshape", "size", "unsupported")


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The kind of ``node`` (one of :data:`KINDS`)."""
    op, target = node.op, node.target
    if op == "placeholder":
        return "input"
    if op == "output":
        return "output"
    if op == "call_module":
        m = modules[target]
        for kind, classes in (
            ("linear", LINEAR_MODULES), ("bn", BN_MODULES), ("affine", (Affine,)), ("qcfs", (QCFS,)),
            ("stateful", (StatefulModule,)), ("pool", POOL_MODULES), ("maxpool", MAXPOOL_MODULES),
            ("relu", RELU_MODULES), ("identity", IDENTITY_MODULES), ("flatten", (nn.Flatten,)),
        ):
            if isinstance(m, classes):
                return kind
        return "unsupported"
    if op == "call_function":
        for kind, fns in (
            ("add", ADD_FUNCTIONS), ("cat", CAT_FUNCTIONS), ("flatten", FLATTEN_FUNCTIONS),
            ("pool", POOL_FUNCTIONS), ("maxpool", MAXPOOL_FUNCTIONS), ("relu", RELU_FUNCTIONS),
            ("identity", IDENTITY_FUNCTIONS), ("reshape", RESHAPE_FUNCTIONS),
        ):
            if target in fns:
                return kind
        if target is operator.getitem and _is_size(node.args[0]):
            return "size"
        return "unsupported"
    if op == "call_method":
        for kind, names in (
            ("add", ADD_METHODS), ("flatten", FLATTEN_METHODS), ("pool", POOL_METHODS), ("relu", RELU_METHODS),
            ("identity", IDENTITY_METHODS), ("reshape", RESHAPE_METHODS), ("size", SIZE_METHODS),
        ):
            if target in names:
                return kind
        return "unsupported"
    return "unsupported"  # get_attr: parameters used directly in forward


def _is_size(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_method" and node.target == "size"


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The node's tensor-valued inputs, in argument order (``cat`` lists flattened)."""
    out = []
    for a in node.args:
        items = a if isinstance(a, (list, tuple)) else (a,)
        out += [x for x in items if isinstance(x, fx.Node) and classify_value(x)]
    return out


def classify_value(node: fx.Node) -> bool:
    """True when the node produces a tensor (per the shape meta written by ShapeProp)."""
    return "tensor_meta" in node.meta and hasattr(node.meta["tensor_meta"], "shape")


def shape_of(node: fx.Node) -> torch.Size:
    return node.meta["tensor_meta"].shape


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


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Every mutating pass ends here: lint, drop dead code and unused submodules, recompile."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
