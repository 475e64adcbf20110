"""Shared pieces of the zoo: the activation factory every architecture takes its QCFS (or ReLU) from."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ann2snn.errors import Ann2SnnError
from ann2snn.layers import GRANULARITIES, QCFS, SignedQCFS

#: What ``act=`` accepts: a QANN (QCFS activations), the plain ReLU ANN of the same architecture, a signed QANN
#: (SignedQCFS, the quantized LeakyReLU) or the plain LeakyReLU ANN it is prepared from.
ACTIVATIONS = ("qcfs", "relu", "signed", "leaky")


@dataclass(frozen=True)
class ActSpec:
    """How a zoo model builds its activations (the QCFS options of DESIGN §2, or plain ReLU / LeakyReLU)."""

    levels: int = 8
    granularity: str = "layer"
    positive: str = "softplus"
    init_threshold: float = 8.0
    shift: float = 0.5
    act: str = "qcfs"
    alpha: float = 0.1
    learn_negative: bool = False

    def __call__(self, num_channels: int, *, dim: int | None = None) -> nn.Module:
        if self.act == "relu":
            return nn.ReLU()
        if self.act == "leaky":
            return nn.LeakyReLU(self.alpha)
        gran = self.granularity
        if gran == "neuron" and dim is None:
            dim = 1  # zoo linears output [B, features]; neuron-wise thresholds lie along dim 1
        kw = dict(shift=self.shift, granularity=gran, num_channels=None if gran == "layer" else num_channels,
                  dim=None if gran == "layer" else dim, positive=self.positive, init_threshold=self.init_threshold)
        if self.act == "qcfs":
            return QCFS(self.levels, **kw)
        if self.learn_negative:  # θ_n learned, starting at the slope's value
            return SignedQCFS(self.levels, learn_negative=True, init_neg_threshold=self.alpha * self.init_threshold,
                              **kw)
        return SignedQCFS(self.levels, alpha=self.alpha, **kw)


def act_spec(levels=8, granularity="layer", positive="softplus", init_threshold=8.0, shift=0.5,
             act="qcfs", alpha=0.1, learn_negative=False) -> ActSpec:
    """Check the activation options of a zoo builder and return the factory.

    ``act="relu"`` builds the plain ReLU ANN of the same architecture (QCFS options are then unused); it can be
    trained, saved and turned into a QANN with :func:`ann2snn.prepare.prepare`. ``act="signed"`` builds
    :class:`~ann2snn.layers.SignedQCFS` activations with ``θ_n = alpha·θ_p`` (or, with ``learn_negative``, θ_n
    learned from ``alpha·init_threshold``); ``act="leaky"`` the plain ``LeakyReLU(alpha)`` ANN that ``prepare``
    turns into that signed QANN.
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
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise Ann2SnnError(f"alpha (the LeakyReLU slope, θ_n/θ_p of a signed QCFS) must be a number > 0, "
                           f"got {alpha!r}")
    if learn_negative and act != "signed":
        raise Ann2SnnError(f"learn_negative applies to act='signed' only, not act={act!r}")
    return ActSpec(int(levels), granularity, positive, float(init_threshold), float(shift), act, float(alpha),
                   bool(learn_negative))
