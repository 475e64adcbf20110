"""The unrolled ONNX format: one graph that runs all T steps.

Input ``input`` is ``[B, C, H, W]`` (direct encoding) or ``[T, B, C, H, W]`` (pre-encoded, e.g. rate-coded
spikes); outputs are ``logits [B, K]`` (mean over T) and ``logits_per_step [T, B, K]`` (the running mean at
every t, so accuracy at t = 1..T comes from one run). The batch axis is dynamic, T is fixed.

How the graph is laid out, and why (each choice measured on onnxruntime CPU):

- Everything after the input is carried as values *accumulated over steps*: a neuron layer emits its spike
  counts ``c_t = Σ_{τ≤t} s_τ`` and the next (affine) layer runs on them with its bias scaled by t, which
  gives the accumulated input ``X_t`` of the next neuron directly. An IF neuron with soft reset fires at step
  t when ``φ + X_t − c_{t−1} ≥ 1``, so a step is Sub, GreaterOrEqual, Cast, Add; no membrane, no
  reset, no per-step difference.
- The read-out after the last stateful operator (pooling, flatten, linear: any affine tail) is composed at export
  into one matrix ``J`` and runs on accumulated spikes: ``J c_t / t + f(0)`` is the running mean of the logits,
  one MatMul for all steps and no cumulative sum (the tail's pools and their NCHWc reorders emitted step by step
  were ~25 % of the graph's time). Except average pools right after the last neuron: they stay out of ``J`` and
  run per step on the counts, in the blocked layout the conv left them in, so only the pooled counts are
  reordered, concatenated and multiplied (MNIST conv net T = 4: 0.88 [0.81–0.92] of the whole-tail ``J`` at
  batch 256, 0.95 at batch 1; interleaved A/B as below).
- A neuron's comparison constant ``1 − φ`` is folded into the bias of the conv / linear that feeds it, so a
  hidden IF step is GreaterOrEqual, Cast, Add.
- A hidden IF neuron whose only input is a Conv2d gets ``−X'_t`` from it (weights and bias negated: exact in
  float) and steps as ``d = −X'_t + c_{t−1}`` (Add), ``s = HardSigmoid(α·d + 1)`` with ``α = −2¹²⁷``,
  ``c_t = c_{t−1} + s``. For every float32 ``d`` but subnormals (which would need weights below ~2⁻¹⁰⁰)
  ``|α·d| ≥ 2`` or ``d = 0``, so the HardSigmoid is exactly ``[d ≤ 0] = [X'_t ≥ c_{t−1}]``, the spike; and the sum
  ``−X'_t + c_{t−1}`` is exact where it is near 0 (Sterbenz), so the decision is the comparison's. Why: onnxruntime
  keeps a conv's output in its blocked NCHWc layout only through Add / Sum / Mul of two blocked tensors and
  Relu / Clip / Sigmoid / HardSigmoid (measured on 1.32: GreaterOrEqual, Cast, Sub, Max, Min, Floor and Add of a
  scalar each cost a reorder out and one back in), and it fuses the Add and the HardSigmoid into the conv: per
  step and layer 5 passes over memory (reorder, GreaterOrEqual, Cast, Add, reorder) become one (the count's Add).
  Interleaved A/B, single-threaded CPU time, new ÷ old per turn, median [min–max]: ResNet-20 T = 4 0.93 [0.81–1.05]
  at batch 1, 0.95 [0.94–0.96] at 32, 0.95 [0.93–0.97] at 256; T = 16 0.93–0.98; MNIST conv net T = 4 0.93–0.97;
  VGG-16 0.96–1.02 (its convolutions dominate). A neuron fed by a residual Add ``conv + shortcut`` does the same
  with the sum reordered (:meth:`_Unroller._residual_if`): the shortcut is negated by the depthwise or projection
  conv that makes it (weights negated), or, an identity, by a depthwise 1×1 conv of weight −1 (a Neg or Sub would
  leave the layout); ``u = −shortcut + c_{t−1}`` fuses into that conv, ``−X_conv + u`` and the HardSigmoid into the
  main conv. ResNet-20, same A/B: 0.955 [0.87–1.03] at T = 4 batch 64, 0.914 [0.87–0.94] at T = 16 batch 32
  (micro-batches of 16), 0.947 at batch 1; the decision moves only at threshold ties (the sum's rounding).
  Bipolar neurons (the exact convention) keep their Floor / Clip form (a two-sided form with two HardSigmoid steps
  and a depthwise conv measured 1.17× slower: ``docs/design.md``). For the same reason a per-channel ``Affine``
  (the scale threshold folding puts on a residual shortcut) is a depthwise 1×1 Conv, not a Mul
  (``common.AFFINE_AS_CONV_CHANNELS``; ResNet-20 0.92–0.97 of the Mul form, bit-identical outputs).
- With direct input, everything before the first neuron is time-invariant and runs once on ``[B, ...]``;
  the first neuron layer has the closed form ``c_t = floor(t·clip(a, 0, 1) + φ)`` (all steps, no recurrence).
  Except where the input feeds only cheap convs into IF neurons (:data:`PER_STEP_INPUT_MACS` multiply-adds per
  output, e.g. a 3-channel 3×3 stem): those convs run once per step on the accumulated input ``N(t)·x`` and their
  neurons take the fused negated form below, in the blocked layout, instead of an Add, a Floor and two reorders
  per step over the largest tensor of the network (MNIST conv net T = 4: 0.92 [0.87–0.95] at batch 256, 0.95 at
  batch 1; ResNet-20 and VGG-16 0.98–1.00).
- Per-step tensors stay separate ``[B, ...]`` values: layers between neurons run once per step on the
  counts of that step rather than once on a ``[T·B, ...]`` stack, so no Concat/Split copies are made between
  steps (they were ~25 % of a stacked graph's time); only the tiny per-step logits are concatenated.
- Except a conv / linear layer with large weights (:data:`STACK_WEIGHT_BYTES`, more than a core's L2 cache, and at
  least :data:`STACK_WEIGHT_RATIO` times its per-sample outputs): it runs once on its input's T steps concatenated
  ``[T·B, ...]`` with its per-step bias ``N(t)·b`` added after, then Split back into steps, so its weights are read
  once instead of T times. Measured (same A/B): VGG-16 T = 16 batch 1 0.51 [0.45–0.66] of the per-step graph;
  stacking every layer instead loses where weights are small: ResNet-20 1.27–1.44 at batch 32 / 256, 0.98–1.03 at
  batch 1, MNIST conv net 1.17 at batch 256. The choice is per layer, by this rule (the batch is dynamic, so it
  cannot be chosen per batch); ``build_unrolled(stacked=True / False)`` forces it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from ann2snn.errors import Ann2SnnError, UnsupportedNodeError
from ann2snn.exporters.common import (
    OFFSETTABLE,
    STEP_ALPHA,
    Emitter,
    affine_as_conv,
    check_graph_module,
    classify_node,
    metadata,
    negate_channels,
    node_shapes,
    stateful_builder,
    stateless_emitter,
    stateless_inputs,
)
from ann2snn.exporters.contract import (
    BATCH,
    ENCODINGS,
    FORMAT_UNROLLED,
    INPUT,
    LOGITS,
    LOGITS_PER_STEP,
    PROBE_PREFIX,  # noqa: F401  (verification-only outputs ``count.<module>``; re-exported)
    probe_name,
)
from ann2snn.neurons import IFNeuron, StatefulModule

__all__ = ["build_unrolled", "PROBE_PREFIX"]
#: the read-out tail is composed into one matrix when it has at most this many entries
MAX_READOUT_ENTRIES = 1 << 22
#: a conv / linear layer runs once on all T steps stacked when its weights take at least this many bytes (more than a
#: core's L2 cache: run step by step, they would be streamed from memory T times) ...
STACK_WEIGHT_BYTES = 1 << 20
#: ... and they outnumber its per-sample outputs at least this many times (the stacking's Concat, bias Add and Split
#: are passes over the outputs: they pay only where the weights dominate)
STACK_WEIGHT_RATIO = 4
_AFFINE_KINDS = ("linear", "affine", "pool", "flatten", "reshape", "add", "cat", "identity", "layout", "token")


#: a neuron after a residual add takes the blocked-layout form (:meth:`_Unroller._residual_if`) when its channels are a
#: multiple of this (onnxruntime's NCHWc block: 8 floats with AVX2, 16 with AVX-512; other counts run unblocked)
BLOCKED_CHANNELS = 8
#: a first-layer conv fed by the direct input runs once per step on the accumulated input when it does at most this
#: many multiply-adds per output (input channels per group × kernel area; 27 for a 3-channel 3×3 conv)
PER_STEP_INPUT_MACS = 32


def _plain_avg_pool(m: nn.Module, in_shape, out_shape) -> bool:
    """Whether ``m`` is emitted as one AveragePool / GlobalAveragePool that shrinks its input (see ``_pool``)."""
    if len(in_shape) != 3 or np.prod(out_shape) >= np.prod(in_shape):
        return False
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return not any(i % o for i, o in zip(in_shape[1:], out_shape[1:]))
    return isinstance(m, nn.AvgPool2d) and not m.ceil_mode and not getattr(m, "divisor_override", None)


def _peel_pools(src: fx.Node, tail: set, modules: dict, shapes: dict) -> fx.Node:
    """The read-out's source after moving the average pools that directly follow it out of the folded tail: they
    then run per step on the counts (in onnxruntime's blocked layout, next to the conv that made them) and the
    read-out's matrix reads the pooled counts (the module docstring has the numbers)."""
    while len(src.users) == 1:
        (u,) = src.users
        m = modules.get(u.target) if u.op == "call_module" else None
        if u not in tail or m is None or not _plain_avg_pool(m, shapes[src], shapes[u]):
            break
        tail.discard(u)
        src = u
    return src


def readout_tail(gm: fx.GraphModule, modules: dict, shapes: dict):
    """``(source, tail_nodes, J, f0)`` when everything after the last stateful operator is one affine map
    ``f(x) = J·vec(x) + f0`` of that operator's output; None otherwise (then the tail is emitted per step)."""
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    tail, stack, sources = set(), [out], set()
    while stack:
        n = stack.pop()
        if n in tail or n in sources:
            continue
        kind = classify_node(n, modules)
        if kind in ("stateful", "input"):
            sources.add(n)
            continue
        if kind not in _AFFINE_KINDS:
            return None
        tail.add(n)
        stack.extend(a for a in n.all_input_nodes)
    if len(sources) != 1 or classify_node(next(iter(sources)), modules) != "stateful":
        return None
    (src,) = sources
    src = _peel_pools(src, tail, modules, shapes)
    numel = int(np.prod(shapes[src]))
    K = int(np.prod(shapes[out]))
    if numel * K > MAX_READOUT_ENTRIES or not tail:
        return None
    order = [n for n in gm.graph.nodes if n in tail]

    def f(x):
        env = {src: x}
        for n in order:
            args = fx.node.map_arg(n.args, lambda a: env[a])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
            if n.op == "call_module":
                env[n] = modules[n.target](*args, **kwargs)
            elif n.op == "call_function":
                env[n] = n.target(*args, **kwargs)
            else:
                env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
        return env[out].reshape(-1)

    zero = torch.zeros(1, *shapes[src])
    with torch.no_grad():
        f0 = f(zero)
    J = torch.autograd.functional.jacobian(lambda x: f(x) - f0, zero).reshape(K, numel)
    return src, tail, J.detach(), f0.detach()


def build_unrolled(snn, *, T: int | None = None, encoding: str = "direct", probes: bool = False,
                   shapes: dict | None = None, stacked: bool | None = None):
    """The unrolled ONNX model (``onnx.ModelProto``) of ``snn`` for ``T`` steps (default ``snn.T``).

    With ``probes=True`` it also outputs ``count.<module>`` ``[T, B, ...]``, each stateful operator's output summed
    over steps 1..t for every t (spike counts for IF neurons), for verification (the export builds this graph once
    and strips the probes from the file it writes). ``shapes``: :func:`~ann2snn.exporters.common.node_shapes` of
    ``snn``, when the caller has them. Under the exact convention the input and every constant count
    ``N(t) = min(t, L)`` times and the logits are the running sums divided by ``N(t)``. ``stacked``: run every
    time-varying conv / linear layer once on its T steps stacked (True), none (False), or those whose weights are
    large (None: :data:`STACK_WEIGHT_BYTES`, :data:`STACK_WEIGHT_RATIO`; see the module docstring).
    """
    T = snn.T if T is None else int(T)
    if T <= 0:
        raise Ann2SnnError(f"T must be a positive number of time steps, got {T}")
    if encoding not in ENCODINGS:
        raise Ann2SnnError(f"encoding must be 'direct' or 'sequence', got {encoding!r}")
    check_graph_module(snn.graph_module)
    return _Unroller(snn, T, encoding, probes, shapes, stacked).build()


class _Unroller:
    """One unrolled emission: ``env`` maps each fx node to a static variable or a list of T accumulated ones."""

    def __init__(self, snn, T: int, encoding: str, probes: bool, shapes: dict | None = None,
                 stacked: bool | None = None) -> None:
        self.snn, self.T, self.encoding, self.probes = snn, T, encoding, probes
        self.n_of = snn.schedule.steps_counted  # N(t): injected steps a value has accumulated by step t
        self.gm: fx.GraphModule = snn.graph_module
        self.shapes = node_shapes(self.gm, snn.input_shape) if shapes is None else shapes
        self.modules = dict(self.gm.named_modules())
        self.em = Emitter("ann2snn_unrolled")
        batch_shape = [BATCH, *snn.input_shape] if encoding == "direct" else [T, BATCH, *snn.input_shape]
        self.inp = self.em.gs.Variable(INPUT, dtype=np.float32, shape=batch_shape)
        self.env: dict[fx.Node, object] = {}
        self.promoted: dict[tuple, object] = {}
        self.probe_outs: list = []
        self.shifted: set[fx.Node] = set()
        self.negated: set[fx.Node] = set()
        self.residual: dict[fx.Node, tuple] = {}  # IF neuron → (main conv, shortcut, how): see _residual_sum
        self.stacked = self._stacked_layers(stacked)
        self.stacks: dict[fx.Node, object] = {}  # a time-varying value's T steps concatenated, [T·B, ...]
        self.offsets = self._offset_producers()
        self.summed = {n.args[0] for n in self.residual}  # residual adds their neuron sums itself (_residual_if)

    def _stacked_layers(self, stacked: bool | None) -> set[fx.Node]:
        """The conv / linear nodes run once on their T steps stacked (see :func:`build_unrolled`)."""
        out = set()
        for n in self.gm.graph.nodes:
            m = self.modules.get(n.target) if n.op == "call_module" else None
            if stacked is False or not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                continue
            size = m.weight.numel()
            if stacked or (size * 4 >= STACK_WEIGHT_BYTES
                           and size >= STACK_WEIGHT_RATIO * int(np.prod(self.shapes[n]))):
                out.add(n)
        return out

    def _offset_producers(self) -> dict[fx.Node, float]:
        """Producers that may fold their neuron's comparison constant into their bias (single use, affine)."""
        offsets = {}
        for n in self.gm.graph.nodes:
            if classify_node(n, self.modules) == "stateful" and n.args and isinstance(n.args[0], fx.Node):
                p, m = n.args[0], self.modules[n.target]
                builder = stateful_builder(n, m)
                off = builder.input_offset(m)
                if off is not None and len(p.users) == 1 and classify_node(p, self.modules) in OFFSETTABLE:
                    offsets[p] = off
                    if self._negatable_conv(p) and builder.negatable(m):
                        self.negated.add(p)
                elif off is not None and isinstance(m, IFNeuron) and builder.negatable(m):
                    residual = self._residual_sum(n)
                    if residual is not None:
                        main, short, how = residual
                        self.residual[n] = residual
                        offsets[main] = off
                        self.negated.add(main)
                        if how != "identity":
                            self.negated.add(short)
        return offsets

    def _negatable_conv(self, p: fx.Node) -> bool:
        """A Conv2d run per step that may emit its output negated (single use)."""
        return p.op == "call_module" and isinstance(self.modules[p.target], nn.Conv2d) and p not in self.stacked \
            and len(p.users) == 1

    def _residual_sum(self, n: fx.Node):
        """``(main, short, how)`` when neuron ``n``'s only input is ``main + short`` (a residual add of single use)
        with ``main`` a Conv2d of single use and ``short`` a ``[B, C, H, W]`` value that can be negated in
        onnxruntime's blocked layout: a Conv2d or per-channel Affine of single use (``how`` "conv" / "affine": emitted
        negated) or any other value (``"identity"``: negated by a depthwise conv of weight −1)."""
        p = n.args[0]
        if classify_node(p, self.modules) != "add" or len(p.users) != 1 or p.kwargs.get("alpha", 1) != 1 \
                or len(p.args) != 2 or not all(isinstance(a, fx.Node) for a in p.args):
            return None
        for main, short in (p.args, p.args[::-1]):
            if not self._negatable_conv(main) or main is short:
                continue
            shape = self.shapes.get(short, ())
            if len(shape) != 3 or shape[0] % BLOCKED_CHANNELS:
                return None
            if self._negatable_conv(short):
                return main, short, "conv"
            kind = classify_node(short, self.modules)
            if kind == "affine" and len(short.users) == 1 and short.op == "call_module" \
                    and affine_as_conv(self.modules[short.target], self.shapes[short.args[0]]):
                return main, short, "affine"
            return main, short, "identity"
        return None

    def at_step(self, node: fx.Node, t: int):
        """``node``'s value accumulated over steps 1..t."""
        v = self.env[node]
        if isinstance(v, list):
            return v[t - 1]
        k = self.n_of(t)
        if k == 1:
            return v
        if (node, k) not in self.promoted:  # a time-invariant value accumulated over N(t) injected steps
            self.promoted[node, k] = self.em.op("Mul", [v, self.em.scalar(float(k))])
        return self.promoted[node, k]

    def build(self):
        folded = readout_tail(self.gm, self.modules, self.shapes)
        tail = folded[1] if folded else set()
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self._direct_input(node) if self.encoding == "direct" else self._sequence_input()
            elif node.op == "output":
                out = node.args[0]
                break
            elif node not in tail:
                self._visit(node)
        K = list(self.shapes[out])
        if K != [int(np.prod(K))]:
            raise Ann2SnnError(f"the network output must be [B, K] to export, got [B, {', '.join(map(str, K))}]")
        per_step = self._folded_readout(folded, K) if folded else self._per_step_readout(out)
        last = self.em.gs.Constant(self.em.fresh("last"), np.array(self.T - 1, dtype=np.int64))  # 0-d: drops axis
        logits = self.em.op("Gather", [per_step, last], {"axis": 0}, name=LOGITS)
        logits.shape, logits.dtype = [BATCH, *K], np.float32
        per_step.shape, per_step.dtype = [self.T, BATCH, *K], np.float32
        meta = metadata(self.snn, T=self.T, fmt=FORMAT_UNROLLED, encoding=self.encoding, shapes=self.shapes)
        return self.em.finish([self.inp], [logits, per_step, *self.probe_outs], meta)

    def _direct_input(self, node: fx.Node):
        """The direct input: static (everything up to the first neurons runs once), or, when it feeds only cheap
        negated convs (:data:`PER_STEP_INPUT_MACS`), accumulated per step ``N(t)·x``, so that those convs run per step
        in the fused form of a hidden IF neuron instead of the closed form's Add / Floor chain."""
        def cheap(u: fx.Node) -> bool:
            m = self.modules.get(u.target) if u.op == "call_module" else None
            return isinstance(m, nn.Conv2d) \
                and m.in_channels // m.groups * int(np.prod(m.kernel_size)) <= PER_STEP_INPUT_MACS

        self.env[node] = self.inp
        if node.users and all(u in self.negated and cheap(u) for u in node.users):
            return [self.at_step(node, t) for t in range(1, self.T + 1)]  # N(t)·x, one Mul per distinct N(t)
        return self.inp

    def _sequence_input(self) -> list:
        """``[T, B, ...]`` pre-encoded input → its running sums, one variable per step."""
        em, T = self.em, self.T
        parts = em.gs.Node("Split", name=em.fresh("n_split"), attrs={"axis": 0},
                           inputs=[self.inp, em.const(np.ones(T, dtype=np.int64))],
                           outputs=[em.gs.Variable(em.fresh("x"), dtype=np.float32) for _ in range(T)])
        em.graph.nodes.append(parts)
        acc, axes = [], em.const(np.array([0], dtype=np.int64))
        for p in parts.outputs:
            x = em.op("Squeeze", [p, axes])
            acc.append(x if not acc else em.op("Add", [acc[-1], x]))
        return acc

    def _visit(self, node: fx.Node) -> None:
        if node in self.summed:
            return  # a residual add that its neuron sums itself (_residual_if)
        kind = classify_node(node, self.modules)
        if kind == "size":
            raise UnsupportedNodeError(node, "size() calls are not exported; express shapes with torch.flatten")
        if kind == "stateful":
            self._stateful(node)
            return
        emit = stateless_emitter(node, kind)
        m = self.modules.get(node.target) if node.op == "call_module" else None
        args = stateless_inputs(node)
        if all(not isinstance(self.env.get(a), list) for a in args if a is not None):
            self.env[node] = emit(self.em, node, m, [self.env[a] if a is not None else None for a in args], 1,
                                  self.shapes)
            return
        extra = {"offset": self.offsets[node]} if node in self.offsets else {}
        if node in self.stacked:
            self.env[node] = self._stacked_linear(node, m, emit, extra.get("offset", 0.0))
            if extra:
                self.shifted.add(node)
            return
        if node in self.negated:
            extra["negate"] = True
        self.env[node] = [emit(self.em, node, m, [self.at_step(a, t) if a is not None else None for a in args],
                               self.n_of(t), self.shapes, **extra) for t in range(1, self.T + 1)]
        if extra:
            self.shifted.add(node)

    def _stacked_linear(self, node: fx.Node, m, emit, offset: float) -> list:
        """A conv / linear run once on its input's T steps stacked ``[T·B, ...]``: one pass over its weights (not T);
        the bias ``N(t)·b + offset`` of each step is added after, then the result is split back into steps."""
        em, T = self.em, self.T
        src = stateless_inputs(node)[0]
        if src not in self.stacks:
            self.stacks[src] = em.op("Concat", list(self.env[src]), {"axis": 0})
        y = emit(em, node, m, [self.stacks[src]], 0.0, self.shapes, with_bias=False)
        out = list(self.shapes[node])
        y = em.op("Reshape", [y, em.const(np.array([T, -1, *out], dtype=np.int64))])
        b = m.bias.detach() if m.bias is not None else torch.zeros(out[-1] if isinstance(m, nn.Linear) else out[0])
        bias = torch.stack([b * self.n_of(t) + offset for t in range(1, T + 1)])  # the per-step form's values
        shape = [T, 1, *([1] * (len(out) - 1)), -1] if isinstance(m, nn.Linear) else [T, 1, -1, *([1] * (len(out) - 1))]
        y = em.op("Add", [y, em.const(bias.reshape(shape), hint="b_steps")])
        parts = em.gs.Node("Split", name=em.fresh("n_split"), attrs={"axis": 0},
                           inputs=[y, em.const(np.ones(T, dtype=np.int64))],
                           outputs=[em.gs.Variable(em.fresh("y"), dtype=np.float32) for _ in range(T)])
        em.graph.nodes.append(parts)
        axes = em.const(np.array([0], dtype=np.int64))
        return [em.op("Squeeze", [p, axes]) for p in parts.outputs]

    def _stateful(self, node: fx.Node) -> None:
        m: StatefulModule = self.modules[node.target]
        if node in self.residual and isinstance(self.env[self.residual[node][0]], list):
            v = self._residual_if(node)
        else:
            if node in self.residual:  # the main conv turned out time-invariant: the plain sum after all
                self._plain_residual_sum(node)
            xs = [self.env[a] for a in node.args if isinstance(a, fx.Node)]
            src = node.args[0]
            neg = {"negated": True} if src in self.negated and isinstance(self.env.get(src), list) else {}
            v = stateful_builder(node, m).unrolled(self.em, m, xs, self.T, shifted=node.args[0] in self.shifted,
                                                   schedule=self.snn.schedule, **neg)
        self.env[node] = v
        if self.probes:  # the accumulated output after every step, [T, B, ...]
            axes = self.em.const(np.array([0], dtype=np.int64))
            steps = [self.em.op("Unsqueeze", [self.at_step(node, t), axes]) for t in range(1, self.T + 1)]
            probe = self.em.op("Concat", steps, {"axis": 0}, name=probe_name(node.target))
            probe.shape = [self.T, BATCH, *self.shapes[node]]
            self.probe_outs.append(probe)

    def _residual_if(self, node: fx.Node) -> list:
        """An IF neuron fed by ``main + short`` (:meth:`_residual_sum`), in the blocked layout end to end: per step
        ``u = −short_t + c_{t−1}`` (onnxruntime fuses the Add into the shortcut's conv), ``d = −X_main,t + u`` and
        ``s = HardSigmoid(α·d + 1)`` (fused into the main conv, as for a conv-fed neuron), ``c_t = c_{t−1} + s``.
        The comparison constant ``1 − φ`` rides in the main conv's bias. Same decision as ``X'_t ≥ c_{t−1}`` up to
        the rounding of the reordered sum (a threshold tie)."""
        main, short, how = self.residual[node]
        em = self.em
        # a shortcut run once (time-invariant) was emitted as it is, whatever its kind: negate it like an identity
        emitted_negated = how != "identity" and isinstance(self.env[short], list)
        counts, c = [], None
        for t in range(1, self.T + 1):
            neg_short = self.at_step(short, t)
            if not emitted_negated:
                neg_short = negate_channels(em, neg_short, self.shapes[short][0])
            u = neg_short if c is None else em.op("Add", [neg_short, c])
            d = em.op("Add", [self.at_step(main, t), u])  # the conv first: onnxruntime fuses the Add into it
            s = em.op("HardSigmoid", [d], {"alpha": STEP_ALPHA, "beta": 1.0})
            c = s if c is None else em.op("Add", [c, s])
            counts.append(c)
        return counts

    def _plain_residual_sum(self, node: fx.Node) -> None:
        """``env`` of the residual add feeding ``node`` when its main conv runs once (time-invariant input): the sum
        itself, the shortcut's sign undone where it was emitted negated; the neuron then takes its ordinary form."""
        main, short, how = self.residual.pop(node)
        add, em = node.args[0], self.em
        sv = self.env[short]
        if not isinstance(sv, list):
            self.env[add] = em.op("Add", [self.env[main], sv])
            return
        op = "Sub" if how != "identity" else "Add"
        self.env[add] = [em.op(op, [self.at_step(main, t), sv[t - 1]]) for t in range(1, self.T + 1)]

    def _folded_readout(self, folded, K: list[int]):
        """``logits_per_step = J·c_t / N(t) + f(0)``: one MatMul over all steps (reads J once; per-step MatMuls
        were 12% slower at batch 1, 3% faster at 256; J as a per-step conv over the whole map, reading the counts
        in onnxruntime's blocked layout, was 0.94 [0.87–1.00] of this at batch 256 but 1.11 [0.97–1.36] at batch 1,
        MNIST conv net T = 4: not kept)."""
        em, T = self.em, self.T
        src, _, J, f0 = folded
        jt = em.const(J.t().contiguous(), hint="readout")
        steps = em.op("Concat", [self.at_step(src, t) for t in range(1, T + 1)], {"axis": 0})  # [T·B, ...]
        flat = em.op("Flatten", [steps], {"axis": 1})
        stacked = em.op("Reshape", [em.op("MatMul", [flat, jt]), em.const(np.array([T, -1, *K], dtype=np.int64))])
        counted = np.array([self.n_of(t) for t in range(1, T + 1)], dtype=np.float32)
        inv_t = em.const(1.0 / counted.reshape(T, 1, 1), hint="inv_t")
        bias = em.const(f0.reshape(K), hint="readout_bias")
        return em.op("Add", [em.op("Mul", [stacked, inv_t]), bias], name=LOGITS_PER_STEP)

    def _per_step_readout(self, out: fx.Node):
        em, T = self.em, self.T
        axes = em.const(np.array([0], dtype=np.int64))
        v = self.env[out]
        if isinstance(v, list):
            means = [em.op("Mul", [acc, em.scalar(1.0 / self.n_of(t))]) for t, acc in enumerate(v, start=1)]
        else:
            means = [v] * T
        return em.op("Concat", [em.op("Unsqueeze", [mt, axes]) for mt in means], {"axis": 0}, name=LOGITS_PER_STEP)
