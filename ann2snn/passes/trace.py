"""Trace a QANN into a torch.fx GraphModule whose nodes carry shapes."""

from __future__ import annotations

import contextlib
import io

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ann2snn.errors import ConversionError
from ann2snn.neurons import StatefulModule
from ann2snn.ops import REGISTRY

#: Modules kept as single nodes (leaves) besides torch.nn's own: every spiking operator and every module class
#: with an operator record (QCFS family, Affine, ...), so a new operator's class is traced whole by its record.
LEAF_MODULES: tuple[type, ...] = (StatefulModule, *dict.fromkeys(
    cls for r in REGISTRY for cls in r.modules if not cls.__module__.startswith("torch.")))


class Ann2SnnTracer(fx.Tracer):
    """A tracer that keeps ann2snn layers whole; torch.nn modules are leaves as usual."""

    def __init__(self, leaf_modules: tuple[type, ...] = LEAF_MODULES) -> None:
        super().__init__()
        self.leaf_modules = leaf_modules
        self.record_stack_traces = True  # errors name the user's source line (node.meta["stack_trace"])

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf_modules) or super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module, *, leaf_modules=LEAF_MODULES) -> fx.GraphModule:
    """torch.fx's symbolic trace with ann2snn layers as leaves; an untraceable model is a one-line error."""
    tracer = Ann2SnnTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... for Python control flow
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"model cannot be traced by torch.fx ({type(exc).__name__}: {first}); remove data-dependent "
            "Python control flow (if/for on tensor values) from forward(), or wrap that code in a leaf module"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def trace(model: nn.Module, *, example_input: torch.Tensor, leaf_modules=LEAF_MODULES) -> fx.GraphModule:
    """Symbolically trace ``model`` and record every node's output shape with ``example_input``.

    Examples:
        >>> gm = trace(net, example_input=torch.zeros(1, 1, 8, 8))
    """
    gm = model if isinstance(model, fx.GraphModule) else symbolic_trace(model, leaf_modules=leaf_modules)
    gm.eval()
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints its own traceback
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:
        root = exc.__cause__ or exc  # ShapeProp wraps the real error
        first = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
        raise ConversionError(
            f"model does not run on an input of shape {tuple(example_input.shape)} ({first}); "
            "pass the input shape the model was trained on (--input-shape C,H,W)"
        ) from exc
    return gm
