"""What both ONNX exporters share: the graph emitter, the stateless-op table and the stateful-op table.

Graphs are emitted node by node with onnx-graphsurgeon straight from the spiking fx graph (no
``torch.onnx.export`` round trip): that is what lets the unrolled exporter pick the cheapest form of each
neuron and keep per-step tensors apart without Concat/Split copies, and it takes milliseconds.

Two tables drive the emission:

- :data:`STATELESS` maps a node kind (``ann2snn.passes.graph.classify``) to a function that emits one
  application of that op. Every stateless op of a converted network is affine, so it takes ``k``, the
  multiplier of its constant part: ``k = 1`` for an ordinary value, ``k = t`` when the unrolled exporter
  applies it to inputs accumulated over ``t`` steps (``f(Σx) = L(Σx) + t·b``).
- :data:`STATEFUL` maps ``StatefulModule.kind`` to a :class:`StatefulBuilder`: how it runs all T steps
  (``unrolled``) and how it runs one step with explicit state (``step``). A new kind (bipolar neuron,
  spiking product) plugs in by adding a builder here; both exporters look every stateful operator up in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from ann2snn.errors import Ann2SnnError, UnsupportedNodeError
from ann2snn.layers import Affine
from ann2snn.neurons import BipolarNeuron, Compensated, IFNeuron, SpikingMaxPool2d, StatefulModule
from ann2snn.passes.graph import classify
from ann2snn.simulator import RATE, TimeSchedule

OPSET = 17
FLOAT = 1  # onnx.TensorProto.FLOAT
BOOL_TO_FLOAT = {"to": FLOAT}


def _gs():
    import onnx_graphsurgeon as gs

    return gs


class Emitter:
    """A graphsurgeon graph under construction, with constants cached by key."""

    def __init__(self, name: str) -> None:
        gs = _gs()
        self.gs = gs
        self.graph = gs.Graph(name=name, opset=OPSET)
        self._consts: dict[Any, Any] = {}
        self._n = 0

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, key=None, hint: str = "c"):
        """A float32 constant (cached by ``key`` when given, so shared weights are stored once)."""
        if key is not None and key in self._consts:
            return self._consts[key]
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.dtype != np.int64:
            arr = arr.astype(np.float32)
        c = self.gs.Constant(self.fresh(hint), np.ascontiguousarray(arr))
        if key is not None:
            self._consts[key] = c
        return c

    def op(self, op_type: str, inputs: list, attrs: dict | None = None, hint: str | None = None, *,
           name: str | None = None, dtype=np.float32):
        """Append one node; returns its output variable (named ``name`` when given)."""
        out = self.gs.Variable(name or self.fresh((hint or op_type).lower()), dtype=dtype)
        node = self.gs.Node(op_type, name=self.fresh(f"n_{hint or op_type}"), attrs=dict(attrs or {}),
                            inputs=list(inputs), outputs=[out])
        self.graph.nodes.append(node)
        return out

    def identity(self, x, name: str):
        return self.op("Identity", [x], name=name)

    def scalar(self, v: float):
        return self.const(np.array(v, dtype=np.float32), key=("scalar", float(v)), hint="s")

    def finish(self, inputs: list, outputs: list, metadata: dict[str, str]):
        """Clean, sort, convert to ``onnx.ModelProto``, stamp metadata and run the checker."""
        import onnx

        g = self.graph
        g.inputs, g.outputs = list(inputs), list(outputs)
        g.cleanup().toposort()
        model = self.gs.export_onnx(g, do_type_check=True)
        model.ir_version = min(model.ir_version, 10)
        model.producer_name = "ann2snn"
        for k, v in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, str(v)
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------------------------------------------------
# shapes of the spiking graph (single step, batch 2)


def node_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> dict[fx.Node, tuple[int, ...]]:
    """Per-sample output shape of every tensor node (one single-step run on zeros)."""
    from ann2snn.neurons import reset_states

    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class _Prop(fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if isinstance(r, torch.Tensor):
                shapes[n] = tuple(r.shape[1:])
            return r

    reset_states(gm)
    try:
        with torch.no_grad():
            _Prop(gm).run(torch.zeros(2, *input_shape))
    finally:
        reset_states(gm)
    return shapes


@torch.no_grad()
def node_constant(gm: fx.GraphModule, node: fx.Node, shapes: dict) -> torch.Tensor | None:
    """``f(0)`` of a stateless node for one sample (its constant part; None when zero): what the exact schedule
    stops injecting after step L. See :func:`ann2snn.simulator.constant_part`."""
    from ann2snn.simulator import constant_part

    def zero(a):
        return torch.zeros(1, *shapes[a]) if a in shapes else a

    args = fx.node.map_arg(node.args, zero)
    kwargs = fx.node.map_arg(node.kwargs, zero)
    return constant_part(fx.Interpreter(gm), node, args, kwargs)


def initial_states(gm: fx.GraphModule, shapes: dict) -> dict[str, list[torch.Tensor]]:
    """``module name -> [initial state of one sample]`` from each operator's own ``init_state``."""
    out = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), StatefulModule):
            xs = [torch.zeros(1, *shapes[a]) for a in n.args if isinstance(a, fx.Node)]
            out[n.target] = [s[0].clone() for s in gm.get_submodule(n.target).init_state(*xs)]
    return out


# ---------------------------------------------------------------------------------------------------------
# stateless ops: emit(em, node, module, args, k, shapes) -> var ; every one affine in its tensor inputs


def _pair(v, n=2):
    return list(v) if isinstance(v, (tuple, list)) else [v] * n


def _bias(em: Emitter, m: nn.Module, k: float, offset: float, n_out: int):
    """The constant part ``k·b + offset`` (None when zero)."""
    if m.bias is None and offset == 0.0:
        return None
    b = (m.bias.detach() * k if m.bias is not None else torch.zeros(n_out)) + offset
    return em.const(b, key=(id(m), "b", k, offset), hint="b")


def _conv(em: Emitter, node, m: nn.Module, xs, k, shapes, offset: float = 0.0, negate: bool = False,
          with_bias: bool = True):
    """A conv / linear layer; ``negate``: emit ``−(W·x + k·b + offset)`` (Conv2d only); ``with_bias=False``: no
    constant part at all (the caller adds it)."""
    if negate:  # −(W·x + k·b + offset): the sign rides on the weights and the bias (exact in float)
        if not isinstance(m, nn.Conv2d):
            raise UnsupportedNodeError(node, "only a Conv2d emits its output negated")
        w = em.const(-m.weight.detach(), key=(id(m), "w", "neg"), hint="w_neg")
        b = (m.bias.detach() * k if m.bias is not None else torch.zeros(m.out_channels)) + offset
        b = em.const(-b, key=(id(m), "b", k, offset, "neg"), hint="b_neg")
        return em.op("Conv", [xs[0], w, b], _conv_attrs(m, 2), hint="conv")
    if isinstance(m, nn.Linear):
        w = em.const(m.weight, key=(id(m), "w"), hint="w")
        bias = _bias(em, m, k, offset, m.out_features) if with_bias else None
        inputs = [xs[0], w] + ([bias] if bias is not None else [])
        if len(shapes[node.args[0]]) == 1:
            return em.op("Gemm", inputs, {"transB": 1}, hint="gemm")
        wt = em.const(m.weight.t(), key=(id(m), "wt"), hint="wt")
        y = em.op("MatMul", [xs[0], wt])
        return em.op("Add", [y, bias]) if bias is not None else y
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        raise UnsupportedNodeError(node, f"{type(m).__name__} is not exported to ONNX; use Conv2d/Conv1d/Linear")
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UnsupportedNodeError(node, "only zero padding given as numbers is exported; set padding=(p, p)")
    attrs = _conv_attrs(m, 1 if isinstance(m, nn.Conv1d) else 2)
    inputs = [xs[0], em.const(m.weight, key=(id(m), "w"), hint="w")]
    bias = _bias(em, m, k, offset, m.out_channels) if with_bias else None
    if bias is not None:
        inputs.append(bias)
    return em.op("Conv", inputs, attrs, hint="conv")


def _conv_attrs(m: nn.Module, nd: int) -> dict:
    return {"strides": _pair(m.stride, nd), "dilations": _pair(m.dilation, nd), "group": m.groups,
            "kernel_shape": _pair(m.kernel_size, nd), "pads": _pair(m.padding, nd) * 2}


#: a per-channel Affine on ``[B, C, H, W]`` is emitted as a depthwise 1×1 Conv (the same product, bit for bit) when C is
#: a multiple of this: onnxruntime runs it in its blocked layout, where a Mul by a ``[C, 1, 1]`` constant leaves it
AFFINE_AS_CONV_CHANNELS = 8


def affine_as_conv(m: Affine, shape) -> bool:
    """Whether the Affine ``m`` on per-sample ``shape`` is emitted as a depthwise 1×1 conv (:func:`_affine_conv`)."""
    C = shape[0] if len(shape) == 3 else 0
    return bool(AFFINE_AS_CONV_CHANNELS) and C > 0 and not C % AFFINE_AS_CONV_CHANNELS and m.weight.numel() == C \
        and tuple(m.weight.shape)[-2:] == (1, 1) \
        and (m.bias is None or m.bias.numel() == 1 or (m.bias.numel() == C and m.bias.shape[-2:] == (1, 1)))


def _affine_conv(em, node, m: Affine, x, k, shapes, offset: float, negate: bool = False):
    """``w ⊙ x + (k·b + offset)`` as ``Conv(x, w[C, 1, 1, 1], group=C)`` (``negate``: its negative, the sign on the
    weights and the bias: exact), or None when the Affine is not per-channel on a ``[B, C, H, W]`` value."""
    shape = shapes[node.args[0]]
    if not affine_as_conv(m, shape):
        return None
    C = shape[0]
    sign = -1.0 if negate else 1.0
    w = em.const(sign * m.weight.detach().reshape(C, 1, 1, 1), key=(id(m), "w_dw", negate), hint="aw_dw")
    inputs = [x, w]
    if m.bias is not None or offset != 0.0:
        b = (m.bias.detach().reshape(-1).expand(C) * k if m.bias is not None else torch.zeros(C)) + offset
        inputs.append(em.const(sign * b, key=(id(m), "b_dw", k, offset, negate), hint="ab_dw"))
    return em.op("Conv", inputs, {"group": C, "kernel_shape": [1, 1]}, hint="affine_conv")


def negate_channels(em, x, channels: int):
    """``−x`` for a ``[B, C, H, W]`` value as a depthwise 1×1 conv of weight −1 (exact; onnxruntime keeps it in its
    blocked layout, where a Neg or a Sub would leave it)."""
    w = em.const(-torch.ones(channels, 1, 1, 1), key=("negate_channels", channels), hint="neg_dw")
    return em.op("Conv", [x, w], {"group": channels, "kernel_shape": [1, 1]}, hint="neg_conv")


def _affine(em, node, m: Affine, xs, k, shapes, offset: float = 0.0, negate: bool = False):
    y = _affine_conv(em, node, m, xs[0], k, shapes, offset, negate)
    if y is not None:
        return y
    if negate:
        raise UnsupportedNodeError(node, "only a per-channel Affine on [B, C, H, W] emits its output negated")
    y = em.op("Mul", [xs[0], em.const(m.weight, key=(id(m), "w"), hint="aw")])
    if m.bias is None and offset == 0.0:
        return y
    b = (m.bias * k if m.bias is not None else torch.zeros(())) + offset
    return em.op("Add", [y, em.const(b, key=(id(m), "b", k, offset), hint="ab")])


#: stateless kinds whose emitter takes ``offset`` (added to the constant part): a neuron's comparison constant
#: can be folded into them
OFFSETTABLE = ("linear", "affine")


def _pool(em, node, m, xs, k, shapes):
    in_shape = shapes[node.args[0]]
    if m is not None:
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d)):
            out = shapes[node][1:]
            if all(o == 1 for o in out):
                return em.op("GlobalAveragePool", [xs[0]])
            if not any(i % o for i, o in zip(in_shape[1:], out)):
                ks = [i // o for i, o in zip(in_shape[1:], out)]
                return em.op("AveragePool", [xs[0]], {"kernel_shape": ks, "strides": ks})
        if isinstance(m, (nn.AvgPool2d, nn.AvgPool1d)):
            nd = 1 if isinstance(m, nn.AvgPool1d) else 2
            ks, pads = _pair(m.kernel_size, nd), _pair(m.padding, nd)
            strides = _pair(m.stride if m.stride is not None else m.kernel_size, nd)
            # ONNX's ceil_mode keeps a last window that starts in the padding, PyTorch drops it
            onnx_out = [-(-(i + 2 * p - k) // s) + 1 if m.ceil_mode else (i + 2 * p - k) // s + 1
                        for i, k, s, p in zip(in_shape[1:], ks, strides, pads)]
            if not getattr(m, "divisor_override", None) and onnx_out == list(shapes[node][1:]):
                return em.op("AveragePool", [xs[0]], {
                    "kernel_shape": ks, "strides": strides, "pads": pads * 2, "ceil_mode": int(m.ceil_mode),
                    "count_include_pad": int(m.count_include_pad)})
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool2d, nn.AvgPool1d)):
            # what AveragePool cannot say (adaptive windows of unequal sizes, divisor_override, PyTorch's ceil_mode)
            # is still a fixed linear map of each channel's positions: one MatMul by the pooling of the identity basis
            n_in, out = int(np.prod(in_shape[1:])), shapes[node]
            mat = m(torch.eye(n_in).reshape(n_in, 1, *in_shape[1:])).reshape(n_in, -1)
            flat = em.op("Reshape", [xs[0], em.const(np.array([0, in_shape[0], n_in], dtype=np.int64))])
            y = em.op("MatMul", [flat, em.const(mat, key=(id(m), "pool"), hint="pool")])
            return em.op("Reshape", [y, em.const(np.array([0, *out], dtype=np.int64))])
    if node.target in (torch.mean, "mean"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        dims = [dims] if isinstance(dims, int) else list(dims)
        rank = len(in_shape) + 1
        # opset 17: ReduceMean takes its axes as an attribute (an input only from opset 18)
        return em.op("ReduceMean", [xs[0]], {"axes": [d % rank for d in dims], "keepdims": int(bool(keep))})
    raise UnsupportedNodeError(node, "this pooling is not exported to ONNX; use nn.AvgPool2d or "
                               "nn.AdaptiveAvgPool2d")


def _flatten(em, node, m, xs, k, shapes):
    out = shapes[node]
    if len(out) == 1:
        return em.op("Flatten", [xs[0]], {"axis": 1})
    shape = em.const(np.array([0, *out], dtype=np.int64))
    return em.op("Reshape", [xs[0], shape])


def _add(em, node, m, xs, k, shapes):
    tensors = [x for x in xs if x is not None]
    consts = [a for a, x in zip(node.args, xs) if x is None]
    alpha = node.kwargs.get("alpha", 1)
    if alpha != 1 or len(tensors) + len(consts) != 2:
        raise UnsupportedNodeError(node, "only a + b is exported; write the sum without alpha")
    if len(tensors) == 2:
        return em.op("Add", tensors)
    return em.op("Add", [tensors[0], em.scalar(float(consts[0]) * k)])


def _cat(em, node, m, xs, k, shapes):
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    rank = len(shapes[node]) + 1
    return em.op("Concat", xs, {"axis": dim % rank})


def _identity(em, node, m, xs, k, shapes):
    return xs[0]


#: layout ops that only permute dims: emitted as one Transpose
_PERMUTES = {torch.permute, torch.transpose, torch.swapaxes, torch.movedim, "permute", "transpose", "swapaxes",
             "movedim"}


def _permutation(node, rank: int) -> list[int] | None:
    """The dim permutation of a permute-like node, read off a probe whose dims all have different sizes."""
    from ann2snn.ops.graph import apply_node

    if node.target not in _PERMUTES:
        return None
    sizes = tuple(range(1, rank + 1))  # batch 1, then 2, 3, ...: a size names its input dim
    try:
        out = apply_node(node, torch.empty(sizes))
    except (ValueError, RuntimeError, TypeError):
        return None
    return [int(s) - 1 for s in out.shape]


def _layout(em, node, m, xs, k, shapes):
    """A layout op (moves elements only): a Transpose when it permutes dims; otherwise one Gather over the flattened
    sample, its indices found by running the op on ``arange`` (:func:`ann2snn.ops.graph.index_map`); a plain
    Reshape when the order does not change."""
    from ann2snn.ops.graph import index_map

    perm = _permutation(node, len(shapes[node.args[0]]) + 1)
    if perm is not None:
        return em.op("Transpose", [xs[0]], {"perm": perm})
    key = (id(node), "index_map")
    out = shapes[node]
    target = em.const(np.array([0, *out], dtype=np.int64), key=(key, "shape"))
    if key not in em._consts:
        idx = index_map(node, shapes[node.args[0]], dict(node.graph.owning_module.named_modules()))
        same = idx.numel() == int(np.prod(shapes[node.args[0]])) and bool(torch.equal(idx, torch.arange(idx.numel())))
        em._consts[key] = None if same else em.const(idx.numpy().astype(np.int64), hint="gather_idx")
    idx = em._consts[key]
    if idx is None:
        return em.op("Reshape", [xs[0], target])
    flat = em.op("Reshape", [xs[0], em.const(np.array([0, -1], dtype=np.int64), key=("flat2d",))])
    return em.op("Reshape", [em.op("Gather", [flat, idx], {"axis": 1}), target])


def _token(em, node, m, xs, k, shapes):
    """``[token·k, x]`` along dim 1: the class token, expanded to the batch, is this op's constant part."""
    x = xs[0]
    tok = em.const(m.token.detach().reshape(1, 1, -1) * k, key=(id(m), "token", k), hint="token")
    batch = em.op("Slice", [em.op("Shape", [x], dtype=np.int64), em.const(np.array([0], dtype=np.int64)),
                            em.const(np.array([1], dtype=np.int64))], dtype=np.int64)
    rest = em.const(np.array([1, m.token.shape[-1]], dtype=np.int64), key=(id(m), "token_shape"))
    shape = em.op("Concat", [batch, rest], {"axis": 0}, dtype=np.int64)
    return em.op("Concat", [em.op("Expand", [tok, shape]), x], {"axis": 1})


#: node kind -> emitter of one application (see module docstring)
STATELESS: dict[str, Callable] = {
    "layout": _layout,
    "token": _token,
    "linear": _conv,
    "affine": _affine,
    "pool": _pool,
    "flatten": _flatten,
    "reshape": _flatten,
    "add": _add,
    "cat": _cat,
    "identity": _identity,
}


def stateless_emitter(node: fx.Node, kind: str) -> Callable:
    """The :data:`STATELESS` emitter for ``node`` of ``kind``, or an error naming the node."""
    emit = STATELESS.get(kind)
    if emit is None:
        raise UnsupportedNodeError(node, f"node kind {kind!r} has no ONNX form; add an emitter to "
                                   "ann2snn.exporters.common.STATELESS")
    return emit


def stateless_inputs(node: fx.Node) -> list[fx.Node | None]:
    """The argument positions an emitter gets variables for (``cat`` takes the list)."""
    if classify_node(node) == "cat":
        return list(node.args[0])
    if classify_node(node) == "add":
        return [a if isinstance(a, fx.Node) else None for a in node.args[:2]]
    return [node.args[0]]


def classify_node(node: fx.Node, modules: dict | None = None) -> str:
    modules = modules if modules is not None else dict(node.graph.owning_module.named_modules())
    return classify(node, modules)


# ---------------------------------------------------------------------------------------------------------
# stateful ops


@dataclass(frozen=True)
class StatefulBuilder:
    """How one stateful-operator kind is emitted.

    - ``unrolled(em, module, xs, T, *, shifted, schedule) -> ys``: ``xs`` are the inputs, each either a static
      variable (the value injected at every step the schedule injects, direct encoding) or a list of T variables
      *accumulated over steps* (``Σ_{τ≤t} x_τ``); returns the output in the same form (accumulated outputs
      ``Σ_{τ≤t} y_τ``). The returned value may be static when the operator commutes with time on a constant
      input (then its accumulated value at step t is ``N(t)`` times it).
    - ``step(em, module, xs, states) -> (y, new_states)``: one step on instantaneous values.
    - ``input_offset(module) -> float | None``: a constant the producer of the (time-varying) input may add to its
      bias so that ``unrolled`` runs cheaper; the builder is then called with ``shifted=True``.
    """

    unrolled: Callable
    step: Callable
    input_offset: Callable = lambda m: None
    negatable: Callable = lambda m: False


def _constant_input_counts(em: Emitter, a, T: int, shift: float, lo: float, schedule: TimeSchedule):
    """Counts of a neuron whose input ``a`` (threshold units) is constant while injected:
    ``count_t = floor(N(t)·clip(a, lo, 1) + φ)``, with ``N(t)·a + φ`` accumulated one Add per injected step (the
    same sum the simulator's membrane accumulates); after the schedule stops, the count stays."""
    a = em.op("Clip", [a, em.scalar(lo), em.scalar(1.0)])
    counts, y = [], None
    for t in range(1, T + 1):
        if not schedule.injected(t):
            counts.append(counts[-1])
            continue
        y = em.op("Add", [a, em.scalar(shift)] if y is None else [y, a])
        counts.append(em.op("Floor", [y]))
    return counts


#: HardSigmoid(α·d + 1) with this α is the step ``[d ≤ 0]`` for every float32 d but subnormals: |α·d| ≥ 2 for
#: |d| ≥ 2⁻¹²⁶ (and ±inf beyond 2); a subnormal d would need weights below ~2⁻¹⁰⁰
STEP_ALPHA = -(2.0 ** 127)


def _if_unrolled(em: Emitter, m: IFNeuron, xs, T: int, *, shifted: bool = False, schedule: TimeSchedule = RATE,
                 negated: bool = False):
    """IF over T steps on accumulated inputs; returns accumulated outputs (spike counts ``c_t``).

    ``shifted``: the producer already subtracted ``1 − φ`` (folded into its bias, see ``OFFSETTABLE``), so a
    spike fires when ``X'_t ≥ c_{t−1}`` — one comparison, no subtraction.
    """
    (x,) = xs
    theta = None if m.unit_threshold else em.const(m.threshold, key=(id(m), "theta"), hint="theta")
    inv = None if m.unit_threshold else em.const(1.0 / m.threshold, key=(id(m), "inv"), hint="inv_theta")
    if not isinstance(x, list):
        # constant input a: count_t = clamp(floor(t·a + φ), 0, t) = floor(t·clip(a, 0, 1) + φ)
        a = x if inv is None else em.op("Mul", [x, inv])
        counts = _constant_input_counts(em, a, T, m.shift, 0.0, schedule)
    else:
        # accumulated input X_t: a spike fires when φ + X_t − count_{t−1} ≥ 1 (the soft-reset membrane)
        counts, c = [], None
        for X in x:
            X = X if inv is None else em.op("Mul", [X, inv])
            if negated:  # X is −X'_t: fire when c_{t−1} − X'_t ≤ 0, a step onnxruntime fuses into the conv
                d = X if c is None else em.op("Add", [X, c])
                s = em.op("HardSigmoid", [d], {"alpha": STEP_ALPHA, "beta": 1.0})
                c = s if c is None else em.op("Add", [c, s])
                counts.append(c)
                continue
            if shifted:
                ge = em.op("GreaterOrEqual", [X, em.scalar(0.0) if c is None else c], dtype=np.bool_)
            else:
                d = X if c is None else em.op("Sub", [X, c])
                ge = em.op("GreaterOrEqual", [d, em.scalar(1.0 - m.shift)], dtype=np.bool_)
            s = em.op("Cast", [ge], BOOL_TO_FLOAT)
            c = s if c is None else em.op("Add", [c, s])
            counts.append(c)
    return counts if theta is None else [em.op("Mul", [c, theta]) for c in counts]


def if_input_offset(m: IFNeuron) -> float | None:
    """The constant a producer may fold into its bias for :func:`_if_unrolled` (``shifted=True``)."""
    return -(1.0 - m.shift) if m.unit_threshold else None


def if_negatable(m: IFNeuron) -> bool:
    """Whether :func:`_if_unrolled` takes its shifted input negated (``negated=True``) from a Conv2d producer."""
    return m.unit_threshold


def _if_step(em: Emitter, m: IFNeuron, xs, states):
    (x,), (v,) = xs, states
    v = em.op("Add", [v, x])
    if m.unit_threshold:
        s = em.op("Cast", [em.op("GreaterOrEqual", [v, em.scalar(1.0)], dtype=np.bool_)], BOOL_TO_FLOAT)
        return s, [em.op("Sub", [v, s])]
    theta = em.const(m.threshold, key=(id(m), "theta"), hint="theta")
    spk = em.op("Cast", [em.op("GreaterOrEqual", [v, theta], dtype=np.bool_)], BOOL_TO_FLOAT)
    out = em.op("Mul", [spk, theta])
    return out, [em.op("Sub", [v, out])]


def _unit_scalar(t: torch.Tensor) -> float | None:
    """The value of a one-element tensor, else None."""
    return float(t) if t.numel() == 1 else None


def _bipolar_value(em: Emitter, m: BipolarNeuron, c):
    """``a(c)``: the accumulated output of counts ``c`` (θ·c, or θ_n·c on the negative side)."""
    theta = _unit_scalar(m.threshold)
    pos = c if theta == 1.0 else em.op("Mul", [c, em.const(m.threshold, key=(id(m), "theta"), hint="theta")])
    if not m.signed or m.symmetric:
        return pos
    neg = em.op("Mul", [em.op("Min", [c, em.scalar(0.0)]), em.const(m.neg_threshold, key=(id(m), "neg"), hint="neg")])
    if theta == 1.0:
        pos = em.op("Max", [c, em.scalar(0.0)])
    else:
        pos = em.op("Mul", [em.op("Max", [c, em.scalar(0.0)]), em.const(m.threshold, key=(id(m), "theta"))])
    return em.op("Add", [pos, neg])


def _bipolar_unrolled(em: Emitter, m: BipolarNeuron, xs, T: int, *, shifted: bool = False,
                      schedule: TimeSchedule = RATE):
    """Bounded bipolar neuron over T steps on accumulated inputs ``X_t``; returns accumulated outputs.

    The neuron moves its count one step per time step towards ``f_t = floor(X_t/θ + φ)`` (clipped to its bounds):
    ``c_t = c_{t−1} + clip(f_t − c_{t−1}, −1, 1)`` — the membrane rule of :class:`BipolarNeuron` written on
    accumulated values. ``shifted``: the producer already added φ (folded into its bias), so ``f_t = floor(X'_t)``.
    """
    (x,) = xs
    unit = _unit_scalar(m.threshold) == 1.0
    inv = None if unit else em.const(1.0 / m.threshold, key=(id(m), "inv"), hint="inv_theta")
    lo = -np.inf if m.n_min is None else float(m.n_min)
    hi = np.inf if m.n_max is None else float(m.n_max)
    if not isinstance(x, list):
        a = x if inv is None else em.op("Mul", [x, inv])
        counts = _constant_input_counts(em, a, T, m.shift, -1.0 if m.signed else 0.0, schedule)
        # |count_t| <= t: a bound b needs enforcing from step |b| + 1 on (the count tracks clip(f_t) exactly)
        if hi < T:
            counts = [c if t <= hi else em.op("Min", [c, em.scalar(hi)]) for t, c in enumerate(counts, start=1)]
        if lo < 0 and -lo < T:
            counts = [c if t <= -lo else em.op("Max", [c, em.scalar(lo)]) for t, c in enumerate(counts, start=1)]
    else:
        counts, c = [], None
        for X in x:
            X = X if inv is None else em.op("Mul", [X, inv])
            f = em.op("Floor", [X if shifted else em.op("Add", [X, em.scalar(m.shift)])])
            if np.isfinite(lo) or np.isfinite(hi):
                f = em.op("Clip", [f, em.scalar(max(lo, -3.0e38)), em.scalar(min(hi, 3.0e38))])
            if c is None:  # c_0 = 0
                c = em.op("Clip", [f, em.scalar(-1.0), em.scalar(1.0)])
            else:
                c = em.op("Add", [c, em.op("Clip", [em.op("Sub", [f, c]), em.scalar(-1.0), em.scalar(1.0)])])
            counts.append(c)
    values: dict[str, object] = {}  # counts repeat after the schedule stops: map each once
    return [values.setdefault(c.name, _bipolar_value(em, m, c)) for c in counts]


def bipolar_input_offset(m: BipolarNeuron) -> float | None:
    """The constant a producer may fold into its bias for :func:`_bipolar_unrolled` (``shifted=True``): φ."""
    return m.shift if _unit_scalar(m.threshold) == 1.0 else None


def _bipolar_step(em: Emitter, m: BipolarNeuron, xs, states):
    (x,), (v, n) = xs, states
    v = em.op("Add", [v, x])
    theta = em.scalar(1.0) if _unit_scalar(m.threshold) == 1.0 else em.const(m.threshold, key=(id(m), "theta"))
    up = em.op("GreaterOrEqual", [v, theta], dtype=np.bool_)
    down = em.op("Less", [v, em.scalar(0.0)], dtype=np.bool_)
    if m.n_max is not None:
        up = em.op("And", [up, em.op("Less", [n, em.scalar(float(m.n_max))], dtype=np.bool_)], dtype=np.bool_)
    if m.n_min is not None:
        down = em.op("And", [down, em.op("Greater", [n, em.scalar(float(m.n_min))], dtype=np.bool_)],
                     dtype=np.bool_)
    s = em.op("Sub", [em.op("Cast", [up], BOOL_TO_FLOAT), em.op("Cast", [down], BOOL_TO_FLOAT)])
    new_n = em.op("Add", [n, s])
    out = s if _unit_scalar(m.threshold) == 1.0 else em.op("Mul", [s, theta])
    v = em.op("Sub", [v, out])
    if m.signed and not m.symmetric:
        out = em.op("Sub", [_bipolar_value(em, m, new_n), _bipolar_value(em, m, n)])
    return out, [v, new_n]


def _maxpool_attrs(m: SpikingMaxPool2d) -> dict:
    pads, ceil = _pair(m.padding), int(m.ceil_mode)
    end_pads = getattr(m, "end_pads", None)
    if end_pads is not None:  # PyTorch's ceil_mode windows as explicit end pads (see SpikingMaxPool2d.end_pads)
        pads, ceil = [*pads, *end_pads], 0
    else:
        pads = pads * 2
    return {"kernel_shape": _pair(m.kernel_size), "strides": _pair(m.stride), "pads": pads,
            "dilations": _pair(m.dilation), "ceil_mode": ceil}


def _maxpool_unrolled(em: Emitter, m: SpikingMaxPool2d, xs, T: int, *, shifted: bool = False,
                      schedule: TimeSchedule = RATE):
    # Σ_{τ≤t} y_τ = maxpool(Σ_{τ≤t} x_τ): the accumulated output is the pool of the accumulated input
    (x,) = xs
    if not isinstance(x, list):
        return em.op("MaxPool", [x], _maxpool_attrs(m))  # maxpool(t·x) = t·maxpool(x)
    return [em.op("MaxPool", [X], _maxpool_attrs(m)) for X in x]


def _maxpool_step(em: Emitter, m: SpikingMaxPool2d, xs, states):
    (x,), (count, prev) = xs, states
    count = em.op("Add", [count, x])
    mx = em.op("MaxPool", [count], _maxpool_attrs(m))
    return em.op("Sub", [mx, prev]), [count, mx]


def _function(em: Emitter, op: nn.Module, xs: list):
    """``f(xs)`` of a compensated operator's QANN module, on one step's values."""
    from ann2snn.layers import MatMul, Multiply

    if isinstance(op, MatMul):
        return em.op("MatMul", xs)
    if isinstance(op, Multiply):
        return em.op("Mul", xs)
    if isinstance(op, nn.Softmax):
        return em.op("Softmax", xs, {"axis": int(op.dim)})
    if isinstance(op, nn.LayerNorm):
        shape = tuple(op.normalized_shape)
        w = op.weight.detach() if op.weight is not None else torch.ones(shape)
        b = op.bias.detach() if op.bias is not None else torch.zeros(shape)
        scale, shift = em.const(w, key=(id(op), "ln_w")), em.const(b, key=(id(op), "ln_b"))
        return em.op("LayerNormalization", [xs[0], scale, shift], {"axis": -len(shape), "epsilon": float(op.eps)})
    if isinstance(op, nn.GELU):
        x = xs[0]
        if op.approximate == "tanh":  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            cube = em.op("Mul", [em.op("Mul", [x, x]), x])
            inner = em.op("Mul", [em.op("Add", [x, em.op("Mul", [cube, em.scalar(0.044715)])]),
                                  em.scalar(float(np.sqrt(2.0 / np.pi)))])
            gate = em.op("Tanh", [inner])
        else:  # 0.5·x·(1 + erf(x/√2))
            gate = em.op("Erf", [em.op("Mul", [x, em.scalar(float(1.0 / np.sqrt(2.0)))])])
        return em.op("Mul", [em.op("Mul", [x, em.scalar(0.5)]), em.op("Add", [gate, em.scalar(1.0)])])
    raise Ann2SnnError(f"the compensated operator on {type(op).__name__} has no ONNX form; add it to "
                       "ann2snn.exporters.common._function")


def _compensated_unrolled(em: Emitter, m: Compensated, xs, T: int, *, shifted: bool = False,
                          schedule: TimeSchedule = RATE):
    """On accumulated inputs the compensated operator needs no state: its accumulated output at step t is
    ``N(t)·f(S_t/N(t))``. A bilinear ``f`` (product) is ``f(S_1, S_2)/N(t)`` — or ``f(x, S_t)`` with one
    time-invariant operand x — so no rescaling of the inputs. All inputs time-invariant: ``f(x)`` is too."""
    from ann2snn.layers import MatMul, Multiply

    if not any(isinstance(x, list) for x in xs):
        return _function(em, m.op, list(xs))
    bilinear = isinstance(m.op, (MatMul, Multiply))
    varying = sum(isinstance(x, list) for x in xs)
    out, cache = [], {}
    for t in range(1, T + 1):
        n = float(schedule.steps_counted(t))
        ins = [x[t - 1] if isinstance(x, list) else x for x in xs]
        key = (tuple(v.name for v in ins), n)
        if key not in cache:
            if bilinear:
                y = _function(em, m.op, ins)
                if varying == 2 and n != 1.0:
                    y = em.op("Mul", [y, em.scalar(1.0 / n)])
            else:
                vals = [v if n == 1.0 or not isinstance(x, list) else em.op("Mul", [v, em.scalar(1.0 / n)])
                        for v, x in zip(ins, xs)]
                y = _function(em, m.op, vals)
                if n != 1.0:
                    y = em.op("Mul", [y, em.scalar(n)])
            cache[key] = y
        out.append(cache[key])
    return out


def _compensated_step(em: Emitter, m: Compensated, xs, states):
    """One step: ``S_i += x_i``; ``tot = N·f(S/N)``; emit ``tot − tot_prev`` (N = min(steps, L) under exact)."""
    k = m.n_inputs
    sums = [em.op("Add", [s, x]) for s, x in zip(states[:k], xs)]
    prev = states[k]
    steps = em.op("Add", [states[k + 1], em.scalar(1.0)])
    n = steps if m.length is None else em.op("Min", [steps, em.scalar(float(m.length))])
    tot = em.op("Mul", [_function(em, m.op, [em.op("Div", [s, n]) for s in sums]), n])
    return em.op("Sub", [tot, prev]), [*sums, tot, steps]


#: StatefulModule.kind -> its builder; both exporters treat every stateful operator through this table.
STATEFUL: dict[str, StatefulBuilder] = {
    "if": StatefulBuilder(unrolled=_if_unrolled, step=_if_step, input_offset=if_input_offset,
                          negatable=if_negatable),
    "bipolar": StatefulBuilder(unrolled=_bipolar_unrolled, step=_bipolar_step, input_offset=bipolar_input_offset),
    "maxpool": StatefulBuilder(unrolled=_maxpool_unrolled, step=_maxpool_step),
    "compensated": StatefulBuilder(unrolled=_compensated_unrolled, step=_compensated_step),
}


def stateful_builder(node: fx.Node, m: StatefulModule) -> StatefulBuilder:
    b = STATEFUL.get(getattr(m, "kind", None))
    if b is None:
        raise UnsupportedNodeError(node, f"stateful operator kind {m.kind!r} ({type(m).__name__}) has no ONNX "
                                   "builder; add one to ann2snn.exporters.common.STATEFUL")
    return b


def metadata(snn, *, T: int, fmt: str, encoding: str, states=(), shapes: dict | None = None) -> dict[str, str]:
    """The ``metadata_props`` both formats carry (:class:`~ann2snn.exporters.contract.ModelMetadata`); ``shapes``
    (:func:`node_shapes`) give its largest per-sample tensor."""
    from ann2snn.exporters.contract import ModelMetadata

    largest = 4 * max(int(np.prod(s)) for s in shapes.values()) if shapes else None
    return ModelMetadata.for_network(snn, T=T, format=fmt, encoding=encoding, states=states,
                                     activation_bytes=largest).to_props()


def check_graph_module(gm: fx.GraphModule) -> None:
    """Raise when the graph's output is not a single tensor node."""
    outs = [n for n in gm.graph.nodes if n.op == "output"]
    if len(outs) != 1 or not isinstance(outs[0].args[0], fx.Node):
        raise Ann2SnnError("the spiking graph must return a single tensor to be exported to ONNX")



# ---------------------------------------------------------------------------------------------------------
# the multi-bit neuron (ann2snn.methods): up to D spikes a step, optional spike budget and calibrated offsets


def _multibit_check(m) -> None:
    if getattr(m, "pre_steps", 0):
        raise Ann2SnnError(f"SRP's pre-run of {m.pre_steps} steps (a reset and a mask between two runs) has no ONNX "
                           "form; export the network without SRP (ann2snn.methods.calibrate.apply_srp)")


def _multibit_initial(em: Emitter, m):
    """``φ + δ``: the initial membrane in threshold units (a scalar unless COS calibrated it per neuron)."""
    if m.offset.numel() == 1:
        return em.scalar(m.shift + float(m.offset))
    return em.const(m.offset + m.shift, key=(id(m), "v0"), hint="v0")


def _multibit_unrolled(em: Emitter, m, xs, T: int, *, shifted: bool = False, schedule: TimeSchedule = RATE):
    """Multi-bit neuron over T steps on accumulated inputs ``X_t``; returns accumulated outputs ``θ·C_t``.

    ``C_t = C_{t−1} + clip(floor(φ + δ + X_t/θ − C_{t−1}), 0, D)``, capped at the budget ``levels·⌈t/period⌉`` when
    there is one: the membrane rule of :class:`~ann2snn.neurons.MultiBitNeuron` written on accumulated values. A
    time-invariant input is accumulated as ``N(t)·x`` (no closed form: the offsets may lie outside ``[0, 1)``)."""
    _multibit_check(m)
    (x,) = xs
    inv = em.const(1.0 / m.threshold, key=(id(m), "inv"), hint="inv_theta")
    v0 = _multibit_initial(em, m)
    D = em.scalar(float(m.max_spikes))
    counts, c = [], None
    for t in range(1, T + 1):
        if isinstance(x, list):
            X = x[t - 1]
        else:
            n = float(schedule.steps_counted(t))
            X = x if n == 1.0 else em.op("Mul", [x, em.scalar(n)])
        u = em.op("Add", [em.op("Mul", [X, inv]), v0])
        s = em.op("Clip", [em.op("Floor", [u if c is None else em.op("Sub", [u, c])]), em.scalar(0.0), D])
        c = s if c is None else em.op("Add", [c, s])
        if m.levels is not None:
            c = em.op("Min", [c, em.scalar(float(m.levels * -(-t // m.period)))])
        counts.append(c)
    theta = em.const(m.threshold, key=(id(m), "theta"), hint="theta")
    return [em.op("Mul", [c, theta]) for c in counts]


def _multibit_step(em: Emitter, m, xs, states):
    """One step: ``v += x``; ``s = clip(floor(v/θ), 0, D)`` (within the budget); ``v −= s·θ``."""
    _multibit_check(m)
    (x,) = xs
    v, n = em.op("Add", [states[0], x]), states[1]
    inv = em.const(1.0 / m.threshold, key=(id(m), "inv"), hint="inv_theta")
    s = em.op("Clip", [em.op("Floor", [em.op("Mul", [v, inv])]), em.scalar(0.0), em.scalar(float(m.max_spikes))])
    rest = []
    if m.levels is not None:
        steps = em.op("Add", [states[2], em.scalar(1.0)])
        budget = em.op("Mul", [em.op("Ceil", [em.op("Div", [steps, em.scalar(float(m.period))])]),
                               em.scalar(float(m.levels))])
        s = em.op("Min", [s, em.op("Sub", [budget, n])])
        rest = [steps]
    out = em.op("Mul", [s, em.const(m.threshold, key=(id(m), "theta"), hint="theta")])
    return out, [em.op("Sub", [v, out]), em.op("Add", [n, s]), *rest]


STATEFUL["multibit"] = StatefulBuilder(unrolled=_multibit_unrolled, step=_multibit_step)
