"""Shared pieces of the zoo: the activation factory every architecture takes its QCFS from."""

from __future__ import annotations

from dataclasses import dataclass

from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS


@dataclass(frozen=True)
class ActSpec:
    """How a zoo model builds its activations (the QCFS options of DESIGN §2)."""

    levels: int = 8
    granularity: str = "layer"
    positive: str = "softplus"
    init_threshold: float = 8.0
    shift: float = 0.5

    def __call__(self, num_channels: int, *, dim: int | None = None) -> QCFS:
        gran = self.granularity
        if gran == "neuron" and dim is None:
            dim = 1  # zoo linears output [B, features]; neuron-wise thresholds lie along dim 1
        return QCFS(
            self.levels,
            shift=self.shift,
            granularity=gran,
            num_channels=None if gran == "layer" else num_channels,
            dim=None if gran == "layer" else dim,
            positive=self.positive,
            init_threshold=self.init_threshold,
        )


def act_spec(levels=8, granularity="layer", positive="softplus", init_threshold=8.0, shift=0.5) -> ActSpec:
    if granularity == "head":
        raise Ann2SnnError("CNN architectures have no attention heads; use granularity 'layer', 'channel' or 'neuron'")
    return ActSpec(int(levels), granularity, positive, float(init_threshold), float(shift))
