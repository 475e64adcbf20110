"""What the passes share: the node kind (a read of the operator registry), the pass result, graph helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from ann2snn.ops import KINDS, kind_of
from ann2snn.ops.graph import is_tensor, modules_of, set_module, shape_of, tensor_inputs, unique_name

__all__ = ["PassResult", "classify", "KINDS", "finish", "is_tensor", "modules_of", "set_module", "shape_of",
           "tensor_inputs", "unique_name"]


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the graph module, what it changed, and the headline counters it declares.

    ``changes`` holds the pass's own lists and numbers (shown pass by pass); ``counters`` are the numbers
    :meth:`ann2snn.passes.ConversionReport.counts` sums over passes, so a new pass never edits the report.
    """

    gm: fx.GraphModule
    changes: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The kind of ``node`` (one of :data:`KINDS`), read from its operator record."""
    return kind_of(node, modules)


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Every mutating pass ends here: lint, drop dead code and unused submodules, recompile."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
