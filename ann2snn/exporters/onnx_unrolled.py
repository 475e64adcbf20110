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
  one MatMul for all steps and no pooling, reordering or cumulative sum (the tail's pools and their NCHWc reorders
  were ~25 % of the graph's time).
- A neuron's comparison constant ``1 − φ`` is folded into the bias of the conv / linear that feeds it, so a
  hidden IF step is GreaterOrEqual, Cast, Add.
- With direct input, everything before the first neuron is time-invariant and runs once on ``[B, ...]``;
  the first neuron layer has the closed form ``c_t = floor(t·clip(a, 0, 1) + φ)`` (all steps, no recurrence).
- Per-step tensors stay separate ``[B, ...]`` values: layers between neurons run once per step on the
  counts of that step rather than once on a ``[T·B, ...]`` stack, so no Concat/Split copies are made between
  steps (they were ~25 % of a stacked graph's time); only the tiny per-step logits are concatenated.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ann2snn.errors import Ann2SnnError, UnsupportedNodeError
from ann2snn.exporters.common import (
    OFFSETTABLE,
    Emitter,
    check_graph_module,
    classify_node,
    metadata,
    node_shapes,
    stateful_builder,
    stateless_emitter,
    stateless_inputs,
)
from ann2snn.neurons import StatefulModule

__all__ = ["build_unrolled", "PROBE_PREFIX"]

#: verification-only outputs: ``count.<module>`` = an operator's output summed over all T steps
PROBE_PREFIX = "count."
#: the read-out tail is composed into one matrix when it has at most this many entries
MAX_READOUT_ENTRIES = 1 << 22
_AFFINE_KINDS = ("linear", "affine", "pool", "flatten", "reshape", "add", "cat", "identity")


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


def build_unrolled(snn, *, T: int | None = None, encoding: str = "direct", probes: bool = False):
    """The unrolled ONNX model (``onnx.ModelProto``) of ``snn`` for ``T`` steps (default ``snn.T``).

    With ``probes=True`` it also outputs ``count.<module>``, each stateful operator's output summed over the T
    steps (spike counts for IF neurons), for verification.
    """
    T = snn.T if T is None else int(T)
    if T <= 0:
        raise Ann2SnnError(f"T must be a positive number of time steps, got {T}")
    if encoding not in ("direct", "sequence"):
        raise Ann2SnnError(f"encoding must be 'direct' or 'sequence', got {encoding!r}")
    gm: fx.GraphModule = snn.graph_module
    check_graph_module(gm)
    shapes = node_shapes(gm, snn.input_shape)
    modules = dict(gm.named_modules())
    em = Emitter("ann2snn_unrolled")
    gs = em.gs
    if encoding == "direct":
        inp = gs.Variable("input", dtype=np.float32, shape=["batch", *snn.input_shape])
    else:
        inp = gs.Variable("input", dtype=np.float32, shape=[T, "batch", *snn.input_shape])
    env: dict[fx.Node, object] = {}
    promoted: dict[tuple, object] = {}
    probe_outs = []
    folded = readout_tail(gm, modules, shapes)
    tail = folded[1] if folded else set()
    # producers that may fold a neuron's comparison constant into their bias
    offsets: dict[fx.Node, float] = {}
    for n in gm.graph.nodes:
        if classify_node(n, modules) == "stateful" and n.args and isinstance(n.args[0], fx.Node):
            p, m = n.args[0], modules[n.target]
            off = stateful_builder(n, m).input_offset(m)
            if off is not None and len(p.users) == 1 and classify_node(p, modules) in OFFSETTABLE:
                offsets[p] = off
    shifted: set[fx.Node] = set()

    def at_step(node, t):
        v = env[node]
        if isinstance(v, list):
            return v[t - 1]
        if t == 1:
            return v
        key = (node, t)
        if key not in promoted:  # a time-invariant value accumulated over t steps
            promoted[key] = em.op("Mul", [v, em.scalar(float(t))])
        return promoted[key]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if encoding == "direct":
                env[node] = inp
            else:
                parts = em.gs.Node("Split", name=em.fresh("n_split"), attrs={"axis": 0},
                                   inputs=[inp, em.const(np.ones(T, dtype=np.int64))],
                                   outputs=[gs.Variable(em.fresh("x"), dtype=np.float32) for _ in range(T)])
                em.graph.nodes.append(parts)
                acc, axes = [], em.const(np.array([0], dtype=np.int64))
                for p in parts.outputs:
                    x = em.op("Squeeze", [p, axes])
                    acc.append(x if not acc else em.op("Add", [acc[-1], x]))
                env[node] = acc
            continue
        if node.op == "output":
            break
        if node in tail:
            continue
        kind = classify_node(node, modules)
        if kind == "size":
            raise UnsupportedNodeError(node, "size() calls are not exported; express shapes with torch.flatten")
        if kind == "stateful":
            m: StatefulModule = modules[node.target]
            builder = stateful_builder(node, m)
            xs = [env[a] for a in node.args if isinstance(a, fx.Node)]
            env[node] = builder.unrolled(em, m, xs, T, shifted=node.args[0] in shifted)
            if probes:
                v = env[node]
                total = v[-1] if isinstance(v, list) else em.op("Mul", [v, em.scalar(float(T))])
                probe = em.op("Identity", [total], name=PROBE_PREFIX + node.target)
                probe.shape = ["batch", *shapes[node]]
                probe_outs.append(probe)
            continue
        emit = stateless_emitter(node, kind)
        m = modules.get(node.target) if node.op == "call_module" else None
        args = stateless_inputs(node)
        if all(not isinstance(env.get(a), list) for a in args if a is not None):
            env[node] = emit(em, node, m, [env[a] if a is not None else None for a in args], 1, shapes)
        else:
            extra = {"offset": offsets[node]} if node in offsets else {}
            env[node] = [emit(em, node, m, [at_step(a, t) if a is not None else None for a in args], t, shapes,
                              **extra) for t in range(1, T + 1)]
            if extra:
                shifted.add(node)

    K = list(shapes[node.args[0]])
    axes = em.const(np.array([0], dtype=np.int64))
    if folded:
        src, _, J, f0 = folded
        jt = em.const(J.t().contiguous(), hint="readout")
        # one MatMul over all steps reads J once (per-step MatMuls were 12% slower at batch 1, 3% faster at 256)
        steps = em.op("Concat", [at_step(src, t) for t in range(1, T + 1)], {"axis": 0})  # [T·B, ...]
        flat = em.op("Flatten", [steps], {"axis": 1})
        stacked = em.op("Reshape", [em.op("MatMul", [flat, jt]), em.const(np.array([T, -1, *K], dtype=np.int64))])
        inv_t = em.const(1.0 / np.arange(1, T + 1, dtype=np.float32).reshape(T, 1, 1), hint="inv_t")
        bias = em.const(f0.reshape(K), hint="readout_bias")
        per_step = em.op("Add", [em.op("Mul", [stacked, inv_t]), bias], name="logits_per_step")
        last_index = em.gs.Constant(em.fresh("last"), np.array(T - 1, dtype=np.int64))  # 0-d: Gather drops the axis
        logits = em.op("Gather", [per_step, last_index], {"axis": 0}, name="logits")
        if K != [int(np.prod(K))]:
            raise Ann2SnnError(f"the network output must be [B, K] to export, got [B, {', '.join(map(str, K))}]")
        logits.shape, logits.dtype = ["batch", *K], np.float32
        per_step.shape, per_step.dtype = [T, "batch", *K], np.float32
        meta = metadata(snn, T=T, fmt="unrolled", encoding=encoding)
        return em.finish([inp], [logits, per_step, *probe_outs], meta)
    out = env[node.args[0]]
    if isinstance(out, list):
        means = [em.op("Mul", [L, em.scalar(1.0 / t)], name="logits" if t == T else None)
                 for t, L in enumerate(out, start=1)]
    else:
        means = [em.op("Identity", [out], name="logits")] * T
    per_step = em.op("Concat", [em.op("Unsqueeze", [mt, axes]) for mt in means], {"axis": 0}, name="logits_per_step")
    logits = means[-1]
    logits.shape, logits.dtype = ["batch", *K], np.float32
    per_step.shape, per_step.dtype = [T, "batch", *K], np.float32
    meta = metadata(snn, T=T, fmt="unrolled", encoding=encoding)
    return em.finish([inp], [logits, per_step, *probe_outs], meta)

