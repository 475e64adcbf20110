"""The functions operator records point to: normalize's rewrites, BatchNorm's affine form, the spiking
replacements and the synaptic-operation rules. Records (:mod:`ann2snn.ops.records`) say which op uses which."""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn
from torch.nn import functional as F

from ann2snn.errors import UnsupportedNodeError
from ann2snn.layers import Affine, MatMul, Multiply
from ann2snn.neurons import Compensated, SpikingMaxPool2d, multibit_for_qcfs, neuron_for_qcfs
from ann2snn.ops.base import SpikingOptions, Synapses
from ann2snn.ops.graph import apply_node, is_tensor, replace_node, set_module, shape_of, unique_name

# --- pattern conditions ------------------------------------------------------------------------------------------


def is_size_item(node: fx.Node) -> bool:
    """``x.size()[i]``: shape arithmetic, not a tensor op."""
    src = node.args[0] if node.args else None
    return node.target is operator.getitem and isinstance(src, fx.Node) and src.op == "call_method" \
        and src.target == "size"


# --- normalize's rewrites: apply(gm, node, nonneg) -> the node standing for it now, or None when removed ----------


def drop(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> None:
    """An identity in eval mode (dropout, ``contiguous``, ``nn.Identity``): its users read its input."""
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)
    return None


def drop_redundant_relu(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> None:
    """A ReLU on a value known to be non-negative does nothing; any other ReLU has no spiking form here."""
    src = node.args[0]
    if src not in nonneg:
        raise UnsupportedNodeError(
            node, "this ReLU is not a QCFS activation and its input can be negative; replace it with "
            "ann2snn.layers.QCFS and fine-tune the model"
        )
    return drop(gm, node, nonneg)


def reshape_to_flatten(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """``view`` / ``reshape`` that flatten trailing dims become ``torch.flatten(x, start)``; any other reshape stays
    (a layout op) when it keeps every sample whole at dim 0 (:func:`check_layout`)."""
    src = node.args[0]
    sin, sout = shape_of(src), shape_of(node)
    start = len(sout) - 1
    if len(sout) <= len(sin) and tuple(sin[:start]) == tuple(sout[:start]) and math.prod(sin[start:]) == sout[-1] \
            and start >= 1:
        return replace_node(gm, node, "call_function", torch.flatten, (src, start))
    return check_layout(gm, node, nonneg)


def check_layout(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """A layout op (permute, transpose, slicing, roll, reshape, ...) is converted as it is when its arguments are
    constants and it keeps the batch at dim 0, each output sample made of its own input sample's elements (the
    simulator runs it on ``[T·B, ...]``, the exporters on ``[B, ...]``)."""
    src = node.args[0] if node.args else None
    if not (isinstance(src, fx.Node) and is_tensor(src)):
        raise UnsupportedNodeError(node, "a layout op must take a tensor as its first argument")
    sin = tuple(shape_of(src)[1:])
    n = math.prod(sin)
    probe = torch.arange(2 * n, dtype=torch.int64).reshape(2, *sin)
    try:
        out = apply_node(node, probe, dict(gm.named_modules()))
    except ValueError:
        raise UnsupportedNodeError(node, "its shape arguments are computed from the input; write them as numbers "
                                   "(the batch dim as -1)") from None
    except (RuntimeError, IndexError, TypeError) as exc:
        raise UnsupportedNodeError(node, f"it does not run on a batch of two ({str(exc).splitlines()[0]}); keep the "
                                   "batch dim first and write the other dims as numbers (the batch as -1)") from None
    if out.dim() == 0 or out.shape[0] != 2 or not bool((out[0] < n).all()) or not bool((out[1] >= n).all()):
        raise UnsupportedNodeError(node, "it moves or merges the batch dim; keep the batch at dim 0 and move only "
                                   "the other dims (e.g. keep windows or heads as a separate dim)")
    return node


#: tuple-producing ops that normalize turns into one slice per used piece
_SPLIT_NAMES = {torch.chunk: "chunk", torch.split: "split", torch.unbind: "unbind", torch.tensor_split: "tensor_split"}


def split_to_slices(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> None:
    """``chunk`` / ``split`` / ``unbind`` / ``tensor_split`` followed by ``[i]`` become one ``torch.narrow``
    (``torch.select`` for unbind) per used piece, so every layout op has one input and one output."""
    name = node.target if node.op == "call_method" else _SPLIT_NAMES.get(node.target, "split")
    src = node.args[0]
    if not (isinstance(src, fx.Node) and is_tensor(src)):
        raise UnsupportedNodeError(node, f"{name} must take a tensor")
    users = list(node.users)
    if not all(u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
               for u in users):
        raise UnsupportedNodeError(node, f"the pieces of {name} must be used by index (a, b = x.{name}(...) or "
                                   f"x.{name}(...)[i])")
    sin = tuple(shape_of(src)[1:])
    idx = torch.arange(math.prod(sin), dtype=torch.int64).reshape(1, *sin)
    try:
        pieces = apply_node(node, idx)
    except ValueError:
        raise UnsupportedNodeError(node, f"the sizes of {name} are computed from the input; write them as "
                                   "numbers") from None
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 and name != "unbind" else
                          (node.args[1] if len(node.args) > 1 and name == "unbind" else 0))
    rank = len(sin) + 1
    if not isinstance(dim, int) or dim % rank == 0:
        raise UnsupportedNodeError(node, f"{name} along the batch dim cannot be converted; split another dim")
    dim %= rank
    start = 0
    starts = []
    for p in pieces:
        starts.append(start)
        start += 1 if name == "unbind" else p.shape[dim]
    for u in users:
        i = u.args[1]
        if name == "unbind":
            u.target, u.args = torch.select, (src, dim, starts[i])
        else:
            u.target, u.args = torch.narrow, (src, dim, starts[i], pieces[i].shape[dim])
    gm.graph.erase_node(node)
    return None


def maxpool_function_to_module(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """``F.max_pool2d(x, ...)`` becomes an ``nn.MaxPool2d`` module (the spiking replacement is module → module)."""
    if node.op != "call_function":
        return node
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    kw = dict(zip(names, node.args[1:]))
    kw.update(node.kwargs)
    if kw.get("return_indices"):
        raise UnsupportedNodeError(node, "max-pool with return_indices cannot be converted; drop return_indices")
    name = unique_name(gm, "maxpool")
    set_module(gm, name, nn.MaxPool2d(**kw))
    return replace_node(gm, node, "call_module", name, (node.args[0],))


#: functional average pools and the module each becomes (the module's arguments follow the function's order)
AVGPOOL_FUNCTIONS = {F.avg_pool1d: nn.AvgPool1d, F.avg_pool2d: nn.AvgPool2d,
                     F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d}


def avgpool_function_to_module(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """``F.avg_pool2d(x, 2)`` (and 1-D, adaptive) becomes ``nn.AvgPool2d(2)``, so exporters meet modules only;
    ``torch.mean`` stays a function."""
    import inspect

    if node.target in (torch.mean, "mean"):  # the simulator and the exporters would mix the samples of a batch
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or ())
        if not dims or 0 in [d % len(shape_of(node.args[0])) for d in dims]:
            raise UnsupportedNodeError(node, "a mean over the batch dim (or over every dim) mixes the samples of a "
                                       "batch; take it over the other dims only, e.g. x.mean((2, 3))")
    cls = AVGPOOL_FUNCTIONS.get(node.target) if node.op == "call_function" else None
    if cls is None:
        return node
    try:
        bound = inspect.signature(cls.__init__).bind(None, *node.args[1:], **node.kwargs)
        module = cls(*bound.args[1:], **bound.kwargs)
    except TypeError as exc:
        raise UnsupportedNodeError(node, f"its arguments do not describe a pooling ({exc}); use {cls.__name__}")
    name = unique_name(gm, "avgpool")
    set_module(gm, name, module)
    return replace_node(gm, node, "call_module", name, (node.args[0],))


def _constant_value(gm: fx.GraphModule, a) -> torch.Tensor | None:
    """The value of a constant operand: a Python number, or a parameter / buffer (a ``get_attr`` node, after
    ``normalize`` folded constant expressions into one); None for a value computed from the input."""
    if isinstance(a, bool):
        return None
    if isinstance(a, (int, float)):
        return torch.tensor(float(a))
    if isinstance(a, fx.Node) and a.op == "get_attr":
        v = gm
        for part in a.target.split("."):
            v = getattr(v, part)
        return v.detach().float() if isinstance(v, torch.Tensor) else None
    return None


def _to_affine(gm: fx.GraphModule, node: fx.Node, x: fx.Node, weight: torch.Tensor,
               bias: torch.Tensor | None) -> fx.Node:
    """Replace ``node`` by ``Affine(weight, bias)(x)``; the output must keep ``x``'s shape."""
    if tuple(shape_of(node)) != tuple(shape_of(x)):
        raise UnsupportedNodeError(node, f"the constant broadcasts the value from {tuple(shape_of(x))} to "
                                   f"{tuple(shape_of(node))}; expand the value instead")
    rank = len(shape_of(x))
    if any(c is not None and c.dim() == rank and c.shape[0] != 1 for c in (weight, bias)):
        raise UnsupportedNodeError(node, "the constant differs along the batch dim; give it batch size 1")
    name = unique_name(gm, "affine")
    set_module(gm, name, Affine(weight, bias))
    return replace_node(gm, node, "call_module", name, (x,))


def check_add(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """The sum of two values of one shape (the ONNX ``Add`` of two streams), or of a value and a constant (a
    parameter such as a position embedding, or a number): that becomes an :class:`~ann2snn.layers.Affine`."""
    if len(node.args) == 2 and not node.kwargs:
        a, b = node.args
        ca, cb = _constant_value(gm, a), _constant_value(gm, b)
        if (ca is None) != (cb is None):
            x, c = (b, ca) if ca is not None else (a, cb)
            if isinstance(x, fx.Node) and is_tensor(x):
                return _to_affine(gm, node, x, torch.ones(()), c)
    args = [a for a in node.args if a is not None]
    if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args) or node.kwargs.get("alpha", 1) != 1:
        raise UnsupportedNodeError(
            node, "only the sum of two tensors, or of a tensor and a constant, is supported (no alpha)"
        )
    if shape_of(args[0]) != shape_of(args[1]):
        raise UnsupportedNodeError(
            node, f"adding shapes {tuple(shape_of(args[0]))} and {tuple(shape_of(args[1]))} relies on broadcasting; "
            "expand the smaller operand explicitly"
        )
    return node


def elementwise(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """``x * c``, ``x / c``, ``x - c``, ``c - x`` with a constant c (number, parameter, buffer) become an
    :class:`~ann2snn.layers.Affine`; the product of two values becomes a :class:`~ann2snn.layers.Multiply` (a
    spiking product after conversion); the quotient or difference of two values is refused."""
    op = node.target if node.op == "call_method" else {
        operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div", operator.sub: "sub",
        torch.sub: "sub"}[node.target]
    if len(node.args) != 2 or (node.kwargs and set(node.kwargs) != {"alpha"} or node.kwargs.get("alpha", 1) != 1):
        raise UnsupportedNodeError(node, f"only a two-operand {op} without options is supported")
    a, b = node.args
    ca, cb = _constant_value(gm, a), _constant_value(gm, b)
    if ca is None and cb is None:
        if op == "mul":
            name = unique_name(gm, "multiply")
            set_module(gm, name, Multiply())
            return replace_node(gm, node, "call_module", name, (a, b))
        raise UnsupportedNodeError(node, f"the {op} of two values has no spiking form; multiply by a constant "
                                   "or use a product (a * b)")
    if ca is not None and cb is not None:
        raise UnsupportedNodeError(node, f"the {op} of two constants should have been folded")
    if op == "mul":
        x, c = (b, ca) if ca is not None else (a, cb)
        return _to_affine(gm, node, x, c, None)
    if op == "div":
        if cb is None:
            raise UnsupportedNodeError(node, "dividing by a value has no spiking form; divide by a constant")
        if bool((cb == 0).any()):
            raise UnsupportedNodeError(node, "division by zero")
        return _to_affine(gm, node, a, 1.0 / cb, None)
    if cb is not None:  # x - c
        return _to_affine(gm, node, a, torch.ones(()), -cb)
    return _to_affine(gm, node, b, -torch.ones(()), ca)  # c - x


def function_to_module(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """``a @ b``, ``softmax(x, dim)``, ``F.gelu(x)`` become modules (``MatMul``, ``nn.Softmax``, ``nn.GELU``): the
    spiking replacement is module → module, and each call site gets its own (stateful) operator."""
    if node.op == "call_module":
        return node
    target = node.target
    fname = target if node.op == "call_method" else getattr(target, "__name__", str(target))
    if fname in ("matmul", "bmm"):
        a, b = node.args[0], node.args[1]
        for v in (a, b):
            if not (isinstance(v, fx.Node) and is_tensor(v)) or v.op == "get_attr":
                raise UnsupportedNodeError(node, "a product with a parameter matrix has no spiking form here; "
                                           "use nn.Linear")
        module, args = MatMul(), (a, b)
    elif fname == "softmax":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if not isinstance(dim, int) or set(node.kwargs) - {"dim"} or len(node.args) > 2:
            raise UnsupportedNodeError(node, "softmax needs dim= as a number and no other options")
        module, args = nn.Softmax(dim), (node.args[0],)
    elif fname == "gelu":
        approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        module, args = nn.GELU(approximate=approx), (node.args[0],)
    else:
        raise UnsupportedNodeError(node, f"{fname} has no module form")
    if module.__class__ is nn.Softmax and dim % (len(shape_of(node))) == 0:
        raise UnsupportedNodeError(node, "softmax over the batch dim has no spiking form")
    name = unique_name(gm, type(module).__name__.lower())
    set_module(gm, name, module)
    return replace_node(gm, node, "call_module", name, args)


# --- BatchNorm ---------------------------------------------------------------------------------------------------


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as ``y = scale·x + shift`` per channel."""
    if bn.running_var is None:
        raise ValueError(f"BatchNorm {bn} has no running statistics (track_running_stats=False)")
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale.detach(), shift.detach()


# --- spiking replacements: replace(module, node, options) -> (spiking module, details for the report) -----------


def describe_threshold(theta: torch.Tensor) -> str:
    return "1" if bool((theta == 1).all()) else f"tensor{tuple(theta.shape)}"


def quantizer_to_neuron(q: nn.Module, node: fx.Node, options: SpikingOptions) -> tuple[nn.Module, dict]:
    """A QCFS-family quantizer becomes the neuron of the time convention (:func:`ann2snn.neurons.neuron_for_qcfs`).

    Its thresholds are broadcast to one step's shape (``[B, ...]`` minus the batch dim): 1 after threshold folding,
    the quantizer's own θ (and θ_n) on an unfolded graph.
    """
    rank = len(shape_of(node))
    theta = q.broadcast_threshold(rank).detach()[0]
    neg = q.broadcast_neg_threshold(rank).detach()[0] if getattr(q, "signed", False) else None
    if options.max_spikes > 1:  # multi-bit spikes (ann2snn.methods): rate convention, unsigned quantizers
        if neg is not None or options.convention != "rate":
            raise UnsupportedNodeError(node, "multi-bit spikes (max_spikes > 1) are for unsigned QCFS under the rate "
                                       "convention; convert with max_spikes=1 or --mode rate without signed layers")
        neuron = multibit_for_qcfs(q, theta, options.max_spikes)
    else:
        neuron = neuron_for_qcfs(q, theta, convention=options.convention, schedule_length=options.schedule_length,
                                 neg_theta=neg)
    details = {"levels": q.levels, "shift": q.shift, "threshold": describe_threshold(theta)}
    if neg is not None:
        details["neg_threshold"] = describe_threshold(neg)
    return neuron, details


def maxpool_to_spiking(m: nn.Module, node: fx.Node, options: SpikingOptions) -> tuple[nn.Module, dict]:
    """Max-pool becomes a max on accumulated inputs (exact in the cumulative sense), or is refused on request."""
    if options.maxpool != "spiking":
        raise UnsupportedNodeError(
            node, "max-pooling has no exact spiking equivalent at every step; train with average pooling "
            "(nn.AvgPool2d) or convert with maxpool='spiking' (CLI: --maxpool spiking)"
        )
    try:
        return SpikingMaxPool2d.from_module(m, tuple(shape_of(node.args[0])[-2:])), {}
    except ValueError as exc:
        raise UnsupportedNodeError(node, str(exc)) from exc


def to_compensated(m: nn.Module, node: fx.Node, options: SpikingOptions) -> tuple[nn.Module, dict]:
    """A non-linear operator on values (product, softmax, LayerNorm, GELU) becomes the compensated operator of
    the time convention (:class:`ann2snn.neurons.Compensated`): exact at every step, it adds no error of its own."""
    if isinstance(m, nn.Softmax) and m.dim is None:
        raise UnsupportedNodeError(node, "nn.Softmax needs an explicit dim")
    n_inputs = sum(isinstance(a, fx.Node) for a in node.args)
    op = Compensated(m, n_inputs, convention=options.convention,
                     length=options.schedule_length if options.convention == "exact" else None)
    return op, {"op": type(m).__name__, "inputs": n_inputs}


# --- synaptic operations ---------------------------------------------------------------------------------------


def _conv_fan_in(m: nn.Module) -> int:
    return (m.in_channels // m.groups) * math.prod(int(k) for k in m.kernel_size)


def _conv_ones(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    return conv(x, torch.ones_like(m.weight, dtype=x.dtype), None, m.stride, m.padding, m.dilation, m.groups)


def _linear_ones(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, torch.ones_like(m.weight, dtype=x.dtype))


CONV_SYNAPSES = Synapses(fan_in=_conv_fan_in, ones=_conv_ones)
LINEAR_SYNAPSES = Synapses(fan_in=lambda m: int(m.in_features), ones=_linear_ones)


# --- dense operations on values (the attention products) ---------------------------------------------------------


def product_macs(m: nn.Module, in_shapes: list, out_shape: tuple) -> int:
    """``a @ b``: every output element is a dot product over a's last dim; ``a * b``: one multiply per element."""
    per_out = int(in_shapes[0][-1]) if isinstance(m, MatMul) else 1
    return math.prod(int(s) for s in out_shape) * per_out


def compensated_macs(m: nn.Module, in_shapes: list, out_shape: tuple) -> int:
    """A compensated operator costs what its function costs (a product's MACs; 0 for softmax, LayerNorm, GELU)."""
    return product_macs(m.op, in_shapes, out_shape) if isinstance(m.op, (MatMul, Multiply)) else 0
