"""The stateful ONNX format: one time step, with every operator state as an explicit input and output.

Inputs: ``input [B, ...]`` (the step's input; for direct encoding the same image every step) and one
``state.<module>.<state>`` per state tensor of every stateful operator (IF neuron: ``v``; spiking max-pool:
``count``, ``max``). Outputs: ``logits_t [B, K]`` (the output layer's value at this step; the logits after t
steps are the running mean of these) and ``state_out.<module>.<state>``, to be fed back at the next step.
The sidecar JSON (:func:`sidecar`) names the states with their per-sample shapes and initial values;
:class:`ann2snn.runtime.StatefulRunner` drives the graph T times.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import fx

from ann2snn.exporters.common import (
    Emitter,
    check_graph_module,
    classify_node,
    initial_states,
    metadata,
    node_shapes,
    stateful_builder,
    stateless_emitter,
    stateless_inputs,
)
from ann2snn.neurons import StatefulModule

__all__ = ["build_stateful", "state_specs"]


def _init_spec(t: torch.Tensor) -> dict:
    flat = t.reshape(-1)
    if flat.numel() and bool(torch.all(flat == flat[0])):
        return {"fill": float(flat[0])}
    return {"values": t.tolist()}


def state_specs(snn) -> list[dict]:
    """One entry per state tensor: ONNX input/output names, module, kind, per-sample shape, initial value."""
    gm = snn.graph_module
    shapes = node_shapes(gm, snn.input_shape)
    inits = initial_states(gm, shapes)
    specs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or n.target not in inits:
            continue
        m = gm.get_submodule(n.target)
        for sname, t in zip(m.state_names, inits[n.target]):
            specs.append({"input": f"state.{n.target}.{sname}", "output": f"state_out.{n.target}.{sname}",
                          "module": n.target, "state": sname, "kind": m.kind, "shape": list(t.shape),
                          "init": _init_spec(t)})
    return specs


def build_stateful(snn, *, T: int | None = None, encoding: str = "direct"):
    """``(onnx.ModelProto, state specs)``: the one-step graph of ``snn`` and its states (see :func:`state_specs`)."""
    T = snn.T if T is None else int(T)
    gm: fx.GraphModule = snn.graph_module
    check_graph_module(gm)
    shapes = node_shapes(gm, snn.input_shape)
    specs = state_specs(snn)
    modules = dict(gm.named_modules())
    em = Emitter("ann2snn_stateful")
    gs = em.gs
    inp = gs.Variable("input", dtype=np.float32, shape=["batch", *snn.input_shape])
    state_in = {s["input"]: gs.Variable(s["input"], dtype=np.float32, shape=["batch", *s["shape"]]) for s in specs}
    state_out = []
    env: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = inp
            continue
        if node.op == "output":
            break
        kind = classify_node(node, modules)
        if kind == "stateful":
            m: StatefulModule = modules[node.target]
            xs = [env[a] for a in node.args if isinstance(a, fx.Node)]
            states = [state_in[f"state.{node.target}.{s}"] for s in m.state_names]
            y, new = stateful_builder(node, m).step(em, m, xs, states)
            for sname, v in zip(m.state_names, new):
                out = em.op("Identity", [v], name=f"state_out.{node.target}.{sname}")
                out.shape = ["batch", *state_in[f"state.{node.target}.{sname}"].shape[1:]]
                state_out.append(out)
            env[node] = y
            continue
        emit = stateless_emitter(node, kind)
        m = modules.get(node.target) if node.op == "call_module" else None
        env[node] = emit(em, node, m, [env[a] if a is not None else None for a in stateless_inputs(node)], 1, shapes)
    logits = em.op("Identity", [env[node.args[0]]], name="logits_t")
    logits.shape = ["batch", *shapes[node.args[0]]]
    meta = metadata(snn, T=T, fmt="stateful", encoding=encoding)
    meta["ann2snn.states"] = json.dumps(specs)
    model = em.finish([inp, *state_in.values()], [logits, *state_out], meta)
    return model, specs
