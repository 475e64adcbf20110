"""Max-pool: convert to a spiking max on accumulated counts, or refuse with a fix."""

from __future__ import annotations

from torch import fx

from ann2snn.errors import UnsupportedNodeError
from ann2snn.neurons import SpikingMaxPool2d
from ann2snn.passes.graph import MAXPOOL_MODULES, finish, modules_of, set_module


def convert_maxpool(gm: fx.GraphModule, *, mode: str = "spiking", record: dict | None = None) -> fx.GraphModule:
    """``mode="spiking"``: each max-pool becomes a :class:`SpikingMaxPool2d` (exact in the cumulative sense);
    ``mode="error"``: refuse, naming the node and the fix (average pooling)."""
    rec = record if record is not None else {}
    rec.update(spiking_maxpools=[])
    modules = modules_of(gm)
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], MAXPOOL_MODULES):
            continue
        if mode != "spiking":
            raise UnsupportedNodeError(
                node, "max-pooling has no exact spiking equivalent at every step; train with average pooling "
                "(nn.AvgPool2d) or convert with maxpool='spiking' (CLI: --maxpool spiking)"
            )
        try:
            set_module(gm, node.target, SpikingMaxPool2d.from_module(modules[node.target]))
        except ValueError as exc:
            raise UnsupportedNodeError(node, str(exc)) from exc
        rec["spiking_maxpools"].append(node.target)
    return finish(gm)
