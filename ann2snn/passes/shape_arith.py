"""Resolve shape arithmetic (``x.shape[i]``, ``x.size(i)``, ``B, C, H, W = x.shape``, ``x.dim()``) before
conversion.

torch.fx records a read of a tensor's shape as graph nodes (``getattr(x, "shape")`` then ``getitem``;
``x.size(0)``, ``x.dim()`` as methods) and the arithmetic on them as ``operator`` calls. A converted network has a
fixed sample shape, so every size but the batch size is a constant: this pass evaluates those nodes on the traced
shapes (ShapeProp's ``tensor_meta``) and writes the numbers into the ops that use them, then erases the shape
nodes. The batch size is kept symbolic: it may stand only as the leading size of ``view`` / ``reshape`` /
``expand`` of a tensor that carries the batch, where it becomes ``-1`` (``x.view(B, -1)`` →
``x.view(-1, C·H·W)``); any other use would bake the batch size of the trace into the graph and is refused,
naming the node and the fix.

Examples:
    >>> gm = trace(net, example_input=torch.zeros(2, 1, 6, 6))   # forward: B, C, H, W = x.shape; x.view(B, -1)
    >>> resolve_shape_arithmetic(gm).changes
    {'shape_nodes_resolved': 5, 'batch_sizes_to_minus_one': 1}
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from ann2snn.errors import UnsupportedNodeError
from ann2snn.ops.graph import is_tensor, shape_of
from ann2snn.passes.graph import PassResult

__all__ = ["resolve_shape_arithmetic", "ARITHMETIC", "SHAPE_ARGUMENT_OPS"]

#: ``operator`` functions evaluated on sizes (and on tuples of sizes: ``x.shape[:2] + (-1,)``)
ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
              operator.pow, operator.neg, operator.pos, operator.getitem)
#: ops whose leading size may be the batch size (it becomes -1): ``(opcode, target)``
SHAPE_ARGUMENT_OPS = (("call_method", "view"), ("call_method", "reshape"), ("call_method", "expand"),
                      ("call_function", torch.reshape))
_FIX = ("use -1 for the batch dim (x.view(-1, ...), x.flatten(1)) and take only non-batch sizes from x.shape / "
        "x.size(i)")


@dataclass(frozen=True)
class _Batch:
    """The batch size, kept symbolic (``expr``: how it was computed; ``"B"`` for the batch size itself)."""

    expr: str = "B"

    @property
    def bare(self) -> bool:
        return self.expr == "B"


def resolve_shape_arithmetic(gm: fx.GraphModule) -> PassResult:
    """Replace every shape read and the arithmetic on it by numbers (the batch size by -1 where allowed).

    Needs the shapes ShapeProp records (:func:`ann2snn.passes.trace`). Raises :class:`UnsupportedNodeError` where the
    batch size is used other than as the leading size of ``view`` / ``reshape`` / ``expand``.
    """
    values: dict[fx.Node, object] = {}   # shape node -> its value (ints, tuples, _Batch)
    batched: set[fx.Node] = set()        # tensors computed from the input: their dim 0 is the batch
    minus_one = 0
    batch: int | None = None             # the batch size of the trace
    for node in list(gm.graph.nodes):
        value = _shape_value(node, values, batched)
        if value is not _NOT_SHAPE:
            values[node] = value
            continue
        if node.op == "placeholder" or any(a in batched for a in node.all_input_nodes):
            batched.add(node)
            if node.op == "placeholder" and batch is None and is_tensor(node) and shape_of(node):
                batch = int(shape_of(node)[0])
        if any(a in values for a in node.all_input_nodes):
            minus_one += _substitute(node, values, batched, batch)
    for node in reversed(list(values)):
        gm.graph.erase_node(node)  # users were rewritten above, later shape nodes erased first
    if values:
        gm.graph.lint()
        gm.recompile()
    changes = {"shape_nodes_resolved": len(values), "batch_sizes_to_minus_one": minus_one}
    return PassResult(gm, changes, {})


_NOT_SHAPE = object()


def _shape_value(node: fx.Node, values: dict, batched: set):
    """The value of a shape node (a size, a tuple of sizes, the rank, arithmetic on them), else ``_NOT_SHAPE``."""
    args = node.args
    if node.op == "call_function" and node.target is getattr and len(args) == 2 and args[1] in ("shape", "ndim"):
        src = args[0]
        return _sizes(node, src, batched) if args[1] == "shape" else len(_sizes(node, src, batched))
    if node.op == "call_function" and node.target is torch.numel or node.op == "call_method" and node.target == "numel":
        sizes = values[args[0]] if args[0] in values else _sizes(node, args[0], batched)  # x.shape[1:].numel()
        return _Batch("numel(x)") if sizes and isinstance(sizes[0], _Batch) else int(torch.Size(sizes).numel())
    if node.op == "call_method" and node.target in ("size", "dim", "ndimension"):
        sizes = _sizes(node, args[0], batched)
        if node.target != "size":
            return len(sizes)
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim")
        return sizes if dim is None else sizes[dim]
    if node.op == "call_function" and node.target in ARITHMETIC and any(a in values for a in node.all_input_nodes):
        if not all(a in values for a in node.all_input_nodes):
            return _NOT_SHAPE  # a tensor op with a size operand (x * C): its sizes are substituted instead
        return _evaluate(node, fx.node.map_arg(args, lambda a: values[a]))
    return _NOT_SHAPE


def _sizes(node: fx.Node, src, batched: set) -> tuple:
    """``src``'s traced shape as a tuple, its dim 0 the symbolic batch size when it carries the batch."""
    if not isinstance(src, fx.Node) or "tensor_meta" not in src.meta or not hasattr(src.meta["tensor_meta"], "shape"):
        raise UnsupportedNodeError(node, "reads the shape of something that is not one traced tensor; read sizes of "
                                   "tensors only")
    shape = tuple(int(s) for s in shape_of(src))
    if src in batched and shape:
        return (_Batch(), *shape[1:])
    return shape


def _evaluate(node: fx.Node, operands: tuple):
    """``node``'s arithmetic on known sizes; on the batch size it is kept as a symbolic expression (refused where it
    is used), except indexing and concatenating tuples of sizes, which keep the batch size itself."""
    fn = node.target
    seq = operands[0] if operands else None
    if fn is operator.getitem and isinstance(seq, tuple) and not isinstance(operands[1], _Batch):
        return seq[operands[1]]
    if fn is operator.add and all(isinstance(o, tuple) for o in operands):
        return seq + operands[1]
    if _batches(operands):
        return _Batch(f"{fn.__name__}({', '.join(_show(o) for o in operands)})")
    try:
        return fn(*operands)
    except (ArithmeticError, TypeError, ValueError, IndexError) as exc:
        raise UnsupportedNodeError(node, f"shape arithmetic fails on the traced sizes {operands} ({exc})") from exc


def _batches(value) -> list[_Batch]:
    found: list[_Batch] = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, _Batch) else v)
    return found


def _show(value) -> str:
    return "B" if isinstance(value, _Batch) and value.bare else value.expr if isinstance(value, _Batch) else repr(value)


def _substitute(node: fx.Node, values: dict, batched: set, batch: int | None) -> int:
    """Write the sizes ``node`` reads into its arguments; returns 1 when the batch size became -1, else 0."""
    args = fx.node.map_arg(node.args, lambda a: values.get(a, a))
    kwargs = fx.node.map_arg(node.kwargs, lambda a: values.get(a, a))
    found = _batches((args, kwargs))
    if not found:
        node.args, node.kwargs = args, kwargs
        return 0
    if node.op == "output":
        raise UnsupportedNodeError(node, "the model returns a size computed from the batch size; return tensors only")
    if (node.op, node.target) not in SHAPE_ARGUMENT_OPS or _batches(kwargs) or len(found) != 1 or not found[0].bare:
        derived = [b.expr for b in found if not b.bare]
        what = f"the batch size in {derived[0]}" if derived else "the batch size"
        raise UnsupportedNodeError(node, f"uses {what} (x.shape[0] / x.size(0)), which would bake the batch of the "
                                   f"traced input into the graph; {_FIX}")
    src, *sizes = args
    lead = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
    if not lead or lead[0] is not found[0]:
        raise UnsupportedNodeError(node, f"uses the batch size as a size other than the leading one; {_FIX}")
    if src not in batched or not is_tensor(src) or not shape_of(src) or shape_of(src)[0] != batch:
        raise UnsupportedNodeError(node, "expands or reshapes a tensor without a batch dim to the batch size, which "
                                   "would bake the batch of the traced input into the graph; for a class token use "
                                   "ann2snn.layers.ClassToken, elsewhere let broadcasting expand it")
    if node.target == "expand":
        node.args = (src, -1, *lead[1:])  # expand's -1 keeps the size of dim 0: the batch, whatever it is
    else:
        node.args = (src, (-1, *(int(s) for s in shape_of(node)[1:])))  # the traced sizes: exact, a single -1
    node.kwargs = kwargs
    return 1
