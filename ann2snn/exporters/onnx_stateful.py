"""The stateful ONNX format: one time step, with every operator state as an explicit input and output.

Inputs: ``input [B, ...]`` (the step's input; for direct encoding the same image every step) and one
``state.<module>.<state>`` per state tensor of every stateful operator (IF neuron: ``v``; spiking max-pool:
``count``, ``max``). Outputs: ``logits_t [B, K]`` (the output layer's value at this step; the logits after t
steps are the running mean of these) and ``state_out.<module>.<state>``, to be fed back at the next step.
The sidecar JSON (:func:`sidecar`) names the states with their per-sample shapes and initial values;
:class:`ann2snn.runtime.StatefulRunner` drives the graph T times.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ann2snn.exporters.common import (
    BOOL_TO_FLOAT,
    Emitter,
    check_graph_module,
    classify_node,
    initial_states,
    metadata,
    node_constant,
    node_shapes,
    stateful_builder,
    stateless_emitter,
    stateless_inputs,
)
from ann2snn.exporters.contract import (
    BATCH,
    FORMAT_STATEFUL,
    INPUT,
    LOGITS_T,
    SCHEDULE_KIND,
    SCHEDULE_MODULE,
    SCHEDULE_STATE,
    StateSpec,
    probe_name,
)
from ann2snn.neurons import StatefulModule

__all__ = ["build_stateful", "state_specs"]


def state_specs(snn, shapes: dict | None = None) -> list[StateSpec]:
    """One entry per state tensor: ONNX input/output names, module, kind, per-sample shape, initial value; under
    the exact convention also the schedule's step counter. ``shapes``: :func:`node_shapes` of ``snn`` if known."""
    gm = snn.graph_module
    shapes = node_shapes(gm, snn.input_shape) if shapes is None else shapes
    inits = initial_states(gm, shapes)
    specs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or n.target not in inits:
            continue
        m = gm.get_submodule(n.target)
        specs += [StateSpec.from_initial(n.target, name, m.kind, t) for name, t in zip(m.state_names, inits[n.target])]
    if snn.schedule.exact:  # the step counter that tells the graph whether step t still injects input/constants
        specs.append(StateSpec(SCHEDULE_MODULE, SCHEDULE_STATE, SCHEDULE_KIND, (1,), fill=0.0))
    return specs


class _Gate:
    """The exact schedule inside the one-step graph: ``g = [step + 1 ≤ L]`` per sample, as ``[B, 1, …]`` of any
    rank; the input is multiplied by g and every constant ``f(0)`` is removed when ``g = 0``."""

    def __init__(self, em: Emitter, step_in, length: int) -> None:
        self.em = em
        self.new_step = em.op("Add", [step_in, em.scalar(1.0)])
        g = em.op("LessOrEqual", [self.new_step, em.scalar(float(length))], dtype=np.bool_)
        self.g = em.op("Cast", [g], BOOL_TO_FLOAT)  # [B, 1]
        self.off = em.op("Sub", [em.scalar(1.0), self.g])
        self._by_rank: dict[tuple, object] = {}

    def _ranked(self, which: str, rank: int):
        key = (which, rank)
        if key not in self._by_rank:
            shape = self.em.const(np.array([-1] + [1] * (rank - 1), dtype=np.int64))
            self._by_rank[key] = self.em.op("Reshape", [getattr(self, which), shape])
        return self._by_rank[key]

    def gate(self, x, rank: int):
        return self.em.op("Mul", [x, self._ranked("g", rank)])

    def drop_constant(self, y, const: torch.Tensor):
        """``y − f(0)·(1 − g)``: the constant stops after step L."""
        c = self.em.const(const[0])
        return self.em.op("Sub", [y, self.em.op("Mul", [c, self._ranked("off", const.dim())])])


def build_stateful(snn, *, T: int | None = None, encoding: str = "direct", probes: bool = False,
                   shapes: dict | None = None):
    """``(onnx.ModelProto, state specs)``: the one-step graph of ``snn`` and its states (see :func:`state_specs`).

    ``probes=True`` adds an output ``count.<module>`` per stateful operator, its output at this step, for
    verification (the export strips them from the file it writes). ``shapes``: :func:`node_shapes` if known.
    """
    T = snn.T if T is None else int(T)
    gm: fx.GraphModule = snn.graph_module
    check_graph_module(gm)
    shapes = node_shapes(gm, snn.input_shape) if shapes is None else shapes
    specs = state_specs(snn, shapes)
    modules = dict(gm.named_modules())
    em = Emitter("ann2snn_stateful")
    inp = em.gs.Variable(INPUT, dtype=np.float32, shape=[BATCH, *snn.input_shape])
    state_in = {s.input: em.gs.Variable(s.input, dtype=np.float32, shape=[BATCH, *s.shape]) for s in specs}
    state_out: list = []
    probe_outs: list = []
    env: dict[fx.Node, object] = {}
    gate = None
    if snn.schedule.exact:
        spec = specs[-1]  # the schedule's step counter
        gate = _Gate(em, state_in[spec.input], snn.schedule.length)
        state_out.append(_state_output(em, gate.new_step, spec))
    by_module = {(s.module, s.state): s for s in specs}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = inp if gate is None or encoding == "sequence" else gate.gate(inp, 1 + len(snn.input_shape))
        elif node.op == "output":
            out_node = node.args[0]
            break
        elif classify_node(node, modules) == "stateful":
            m: StatefulModule = modules[node.target]
            mine = [by_module[node.target, s] for s in m.state_names]
            xs = [env[a] for a in node.args if isinstance(a, fx.Node)]
            env[node], new = stateful_builder(node, m).step(em, m, xs, [state_in[s.input] for s in mine])
            state_out += [_state_output(em, v, s) for v, s in zip(new, mine)]
            if probes:
                probe = em.op("Identity", [env[node]], name=probe_name(node.target))
                probe.shape = [BATCH, *shapes[node]]
                probe_outs.append(probe)
        else:
            env[node] = _stateless(em, gm, node, modules, env, shapes, gate)
    logits = em.op("Identity", [env[out_node]], name=LOGITS_T)
    logits.shape = [BATCH, *shapes[out_node]]
    meta = metadata(snn, T=T, fmt=FORMAT_STATEFUL, encoding=encoding, states=specs, shapes=shapes)
    model = em.finish([inp, *state_in.values()], [logits, *state_out, *probe_outs], meta)
    return model, specs


def _state_output(em: Emitter, value, spec: StateSpec):
    out = em.op("Identity", [value], name=spec.output)
    out.shape = [BATCH, *spec.shape]
    return out


def _stateless(em: Emitter, gm, node: fx.Node, modules: dict, env: dict, shapes: dict, gate):
    """One stateless op on this step's values; under the exact schedule its constant stops after step L."""
    emit = stateless_emitter(node, classify_node(node, modules))
    m = modules.get(node.target) if node.op == "call_module" else None
    y = emit(em, node, m, [env[a] if a is not None else None for a in stateless_inputs(node)], 1, shapes)
    const = node_constant(gm, node, shapes) if gate is not None else None
    return y if const is None else gate.drop_constant(y, const)
