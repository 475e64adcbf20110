"""Shared pieces of the zoo: the activation factory every architecture takes its QCFS (or ReLU) from."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ann2snn.errors import Ann2SnnError
from ann2snn.layers import GRANULARITIES, QCFS

#: What ``act=`` accepts: a QANN (QCFS activations) or the plain ReLU ANN of the same architecture.
ACTIVATIONS = ("qcfs", "relu")


@dataclass(frozen=True)
class ActSpec:
    """How a zoo model builds its activations (the QCFS options of DESIGN §2, or plain ReLU)."""

    levels: int = 8
    granularity: str = "layer"
    positive: str = "softplus"
    init_threshold: float = 8.0
    shift: float = 0.5
    act: str = "qcfs"

    def __call__(self, num_channels: int, *, dim: int | None = None) -> nn.Module:
        if self.act == "relu":
            return nn.ReLU()
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


def act_spec(levels=8, granularity="layer", positive="softplus", init_threshold=8.0, shift=0.5,
             act="qcfs") -> ActSpec:
    """Check the activation options of a zoo builder and return the factory.

    ``act="relu"`` builds the plain ReLU ANN of the same architecture (QCFS options are then unused); it can be
    trained, saved and turned into a QANN with :func:`ann2snn.prepare.prepare`.
    """
    if act not in ACTIVATIONS:
        raise Ann2SnnError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels <= 0:
        raise Ann2SnnError(f"levels must be a positive integer (QCFS quantization levels L), got {levels!r}")
    if granularity == "head":
        raise Ann2SnnError("CNN architectures have no attention heads; use granularity 'layer', 'channel' or 'neuron'")
    if granularity not in GRANULARITIES:
        raise Ann2SnnError(f"granularity must be 'layer', 'channel' or 'neuron', got {granularity!r}")
    if positive not in ("softplus", "none"):
        raise Ann2SnnError(f"positive must be 'softplus' or 'none', got {positive!r}")
    if float(init_threshold) <= 0:
        raise Ann2SnnError(f"init_threshold must be > 0, got {init_threshold!r}")
    return ActSpec(int(levels), granularity, positive, float(init_threshold), float(shift), act)
