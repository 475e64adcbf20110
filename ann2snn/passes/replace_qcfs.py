"""Replace every QCFS node with a stateful IF neuron (soft reset, v0 = φ·θ)."""

from __future__ import annotations

from torch import fx

from ann2snn.layers import QCFS
from ann2snn.neurons import IFNeuron
from ann2snn.passes.graph import finish, modules_of, set_module, shape_of, unique_name


def replace_qcfs_with_if(gm: fx.GraphModule, *, record: dict | None = None) -> fx.GraphModule:
    """Turn each QCFS call into its own :class:`IFNeuron` (neurons hold state, so call sites never share one).

    After :func:`fold_thresholds` every QCFS has θ = 1 and the neurons compare against 1; on an unfolded
    graph each neuron gets the QCFS's θ and emits ``θ·s``.
    """
    rec = record if record is not None else {}
    rec.update(neurons=[])
    modules = modules_of(gm)
    used: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], QCFS):
            continue
        q = modules[node.target]
        shape = tuple(shape_of(node))
        theta = q.broadcast_threshold(len(shape)).detach()[0]  # drop the batch dim: one step is [B, ...]
        name = node.target if node.target not in used else unique_name(gm, node.target)
        used.add(name)
        set_module(gm, name, IFNeuron(theta, shift=q.shift))
        node.target = name
        rec["neurons"].append({"node": name, "kind": IFNeuron.kind, "levels": q.levels, "shift": q.shift,
                               "threshold": "1" if bool((theta == 1).all()) else f"tensor{tuple(theta.shape)}",
                               "state_shape": list(shape[1:])})
    return finish(gm)
