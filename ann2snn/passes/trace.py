"""Trace a QANN into a torch.fx GraphModule whose nodes carry shapes."""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ann2snn.errors import Ann2SnnError, ConversionError
from ann2snn.neurons import StatefulModule
from ann2snn.ops import REGISTRY

#: Modules kept as single nodes (leaves) besides torch.nn's own: every spiking operator and every module class
#: with an operator record (QCFS family, Affine, ...), so a new operator's class is traced whole by its record.
LEAF_MODULES: tuple[type, ...] = (StatefulModule, *dict.fromkeys(
    cls for r in REGISTRY for cls in r.modules if not cls.__module__.startswith("torch.")))


class Ann2SnnTracer(fx.Tracer):
    """A tracer that keeps ann2snn layers whole; torch.nn modules are leaves as usual."""

    def __init__(self, leaf_modules: tuple[type, ...] = LEAF_MODULES, *, stack_traces: bool = False) -> None:
        super().__init__()
        self.leaf_modules = leaf_modules
        # node.meta["stack_trace"]: the user's source line, for error messages. Off by default: recording makes
        # torch.fx import torch._dynamo (~2 s of CPU per process); run_pipeline traces again with it on an error.
        self.record_stack_traces = stack_traces

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf_modules) or super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module, *, leaf_modules=LEAF_MODULES, stack_traces: bool = False) -> fx.GraphModule:
    """torch.fx's symbolic trace with ann2snn layers as leaves; an untraceable model is a one-line error.
    ``stack_traces``: record each node's source line in ``node.meta["stack_trace"]`` (slower)."""
    tracer = Ann2SnnTracer(leaf_modules, stack_traces=stack_traces)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... for Python control flow
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"model cannot be traced by torch.fx ({type(exc).__name__}: {first}); remove data-dependent "
            "Python control flow (if/for on tensor values) from forward(), or wrap that code in a leaf module"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class _ShapeProp(fx.Interpreter):
    """torch.fx's ShapeProp (``node.meta["tensor_meta"]``) for real tensors only: ShapeProp itself imports torch's
    symbolic-shape machinery (sympy) on its first node, ~0.2 s of a conversion's process for fake tensors it is
    never given here; errors propagate as raised, with no traceback printed."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        found = False

        def meta(obj):
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj, include_contiguity=False)  # that check imports sympy
            return obj

        m = map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = m
        n.meta["type"] = type(result)
        return result


def trace(model: nn.Module, *, example_input: torch.Tensor, leaf_modules=LEAF_MODULES) -> fx.GraphModule:
    """Symbolically trace ``model`` and record every node's output shape with ``example_input``.

    Examples:
        >>> gm = trace(net, example_input=torch.zeros(1, 1, 8, 8))
    """
    gm = model if isinstance(model, fx.GraphModule) else symbolic_trace(model, leaf_modules=leaf_modules)
    gm.eval()
    try:
        with torch.no_grad():
            _ShapeProp(gm).run(example_input)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"model does not run on an input of shape {tuple(example_input.shape)} ({first}); "
            "pass the input shape the model was trained on (--input-shape C,H,W)"
        ) from exc
    return gm


def source_stack(model: nn.Module, node_name: str, *, leaf_modules=LEAF_MODULES) -> str | None:
    """The stack trace (user's source line) of the node named ``node_name`` in a fresh trace of ``model`` that
    records them; None when the model does not trace or has no such node. Node names are deterministic, so this
    finds the node of an earlier trace without stack traces."""
    try:
        gm = symbolic_trace(model, leaf_modules=leaf_modules, stack_traces=True)
    except Ann2SnnError:
        return None
    node = next((n for n in gm.graph.nodes if n.name == node_name), None)
    return None if node is None else node.meta.get("stack_trace")
