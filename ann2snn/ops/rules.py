"""The functions operator records point to: normalize's rewrites, BatchNorm's affine form, the spiking
replacements and the synaptic-operation rules. Records (:mod:`ann2snn.ops.records`) say which op uses which."""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn
from torch.nn import functional as F

from ann2snn.errors import UnsupportedNodeError
from ann2snn.neurons import SpikingMaxPool2d, neuron_for_qcfs
from ann2snn.ops.base import SpikingOptions, Synapses
from ann2snn.ops.graph import replace_node, set_module, shape_of, unique_name

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
    """``view`` / ``reshape`` that flatten trailing dims become ``torch.flatten(x, start)``."""
    src = node.args[0]
    sin, sout = shape_of(src), shape_of(node)
    start = len(sout) - 1
    if not (len(sout) <= len(sin) and tuple(sin[:start]) == tuple(sout[:start])
            and math.prod(sin[start:]) == sout[-1] and start >= 1):
        raise UnsupportedNodeError(
            node, f"reshape {tuple(sin)} -> {tuple(sout)} is not a flatten of trailing dims; only flattening "
            "reshapes are supported in CNNs: use torch.flatten(x, 1)"
        )
    return replace_node(gm, node, "call_function", torch.flatten, (src, start))


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


def check_add(gm: fx.GraphModule, node: fx.Node, nonneg: set) -> fx.Node:
    """Only the sum of two tensors of one shape is supported (the ONNX ``Add`` of two streams)."""
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
    return node


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
        return SpikingMaxPool2d.from_module(m), {}
    except ValueError as exc:
        raise UnsupportedNodeError(node, str(exc)) from exc


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
