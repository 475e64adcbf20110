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


# ------------------------------------------------------------------------------------------------------------
# Transformers: where HN-QCFS puts its quantizers (DESIGN §2, the transformer paragraph).

#: What a zoo transformer's ``granularity=`` accepts: one θ per quantizer (``"layer"``, the ablation), head-wise θ
#: on the attention quantizers only (H-QCFS), neuron-wise θ on the LayerNorm / MLP quantizers only (N-QCFS), or
#: both (HN-QCFS, the seed's).
TRANSFORMER_GRANULARITIES = ("layer", "head", "neuron", "head-neuron")

#: Names of the attention quantizers (head-wise under H-QCFS); every other quantizer of a zoo transformer is
#: neuron-wise under N-QCFS (the LayerNorm outputs feeding q/k/v and the MLP, and the MLP hidden layer).
HEAD_QUANTIZERS = ("quant_q", "quant_k", "quant_v", "quant_attn", "quant_out")


@dataclass(frozen=True)
class QuantSpec:
    """How a zoo transformer builds its quantizers: HN-QCFS, or none at all (``act="relu"``, the plain ANN).

    Signed quantizers (LayerNorm outputs, q, k, v, attn·V) are :class:`SignedQCFS` with ``θ_n = θ_p`` (symmetric)
    or, with ``learn_negative``, θ_n learned. Head-wise thresholds lie along the head dim of the attention tensors
    (``[B, H, N, Dh]``: dim 1; Swin's ``[B, nW, H, N, Dh]``: dim 2), so θ has shape ``(1, H, 1, 1)`` after
    broadcasting; neuron-wise thresholds lie along the last dim (features), shape ``(F,)``.
    """

    levels: int = 4
    granularity: str = "head-neuron"
    positive: str = "softplus"
    init_threshold: float = 2.0
    shift: float = 0.5
    act: str = "qcfs"
    learn_negative: bool = False

    def _make(self, kind: str, n: int, dim: int, *, signed: bool, init: float | None) -> nn.Module:
        if self.act == "relu":
            return nn.Identity()
        per = self.granularity in (kind, "head-neuron")
        kw = dict(shift=self.shift, granularity=kind if per else "layer", num_channels=n if per else None,
                  dim=dim if per else None, positive=self.positive,
                  init_threshold=self.init_threshold if init is None else init)
        if not signed:
            return QCFS(self.levels, **kw)
        if self.learn_negative:
            return SignedQCFS(self.levels, learn_negative=True, **kw)
        return SignedQCFS(self.levels, alpha=1.0, **kw)

    def neuron(self, features: int, *, signed: bool) -> nn.Module:
        """A quantizer with one θ per feature (last dim) under N-QCFS; identity for the plain ANN."""
        return self._make("neuron", features, -1, signed=signed, init=None)

    def head(self, heads: int, *, dim: int, signed: bool, init_threshold: float | None = None) -> nn.Module:
        """A quantizer with one θ per head (along ``dim``) under H-QCFS; identity for the plain ANN."""
        return self._make("head", heads, dim, signed=signed, init=init_threshold)

    def hidden(self, features: int) -> nn.Module:
        """The MLP hidden activation: an unsigned neuron-wise QCFS replacing GELU (GELU in the plain ANN)."""
        return nn.GELU() if self.act == "relu" else self._make("neuron", features, -1, signed=False, init=None)


def quant_spec(levels=4, granularity="head-neuron", positive="softplus", init_threshold=2.0, shift=0.5,
               act="qcfs", learn_negative=False) -> QuantSpec:
    """Check the quantizer options of a zoo transformer and return the factory.

    ``act="relu"`` builds the plain ANN of the same architecture: GELU in the MLP and no quantizers (QCFS options
    unused). ``granularity`` is one of :data:`TRANSFORMER_GRANULARITIES`.
    """
    if act not in ("qcfs", "relu"):
        raise Ann2SnnError(f"transformer act must be 'qcfs' (HN-QCFS QANN) or 'relu' (plain ANN with GELU), "
                           f"got {act!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels <= 0:
        raise Ann2SnnError(f"levels must be a positive integer (QCFS quantization levels L), got {levels!r}")
    if granularity not in TRANSFORMER_GRANULARITIES:
        raise Ann2SnnError(f"transformer granularity must be one of {', '.join(TRANSFORMER_GRANULARITIES)}, got "
                           f"{granularity!r}")
    if positive not in ("softplus", "none"):
        raise Ann2SnnError(f"positive must be 'softplus' or 'none', got {positive!r}")
    if float(init_threshold) <= 0:
        raise Ann2SnnError(f"init_threshold must be > 0, got {init_threshold!r}")
    return QuantSpec(int(levels), granularity, positive, float(init_threshold), float(shift), act,
                     bool(learn_negative))


class ZooTransformer(nn.Module):
    """Base of the zoo's transformers: what training asks of one (two-stage plans, transformer defaults).

    ``ann2snn train`` picks AdamW, warmup and weight decay for these, and stage 2 of a two-stage run makes each
    quantizer head- or neuron-wise as :meth:`threshold_plan` says.
    """

    def threshold_plan(self, granularity: str = "head-neuron") -> dict[str, tuple[str, int]]:
        """Qualified quantizer name → (granularity, dim); see :func:`threshold_plan`."""
        return threshold_plan(self, granularity)


def threshold_plan(model: nn.Module, granularity: str = "head-neuron") -> dict[str, tuple[str, int]]:
    """Where each quantizer of a zoo transformer takes its thresholds: qualified name → (granularity, dim).

    The attention quantizers (:data:`HEAD_QUANTIZERS`) go head-wise along their module's ``head_dim_axis``,
    the others neuron-wise along dim -1; ``granularity="head"`` / ``"neuron"`` keep only one kind. This is what
    :func:`ann2snn.layers.to_channelwise` takes for stage 2 of two-stage training (layer-wise θ copied into
    every head / neuron).
    """
    if granularity not in TRANSFORMER_GRANULARITIES[1:]:
        raise Ann2SnnError(f"threshold_plan needs granularity 'head', 'neuron' or 'head-neuron', got {granularity!r}")
    plan = {}
    for name, module in model.named_modules():
        axis = getattr(module, "head_dim_axis", None)
        for child_name, q in module.named_children():
            if not isinstance(q, QCFS):
                continue
            kind = "head" if axis is not None and child_name in HEAD_QUANTIZERS else "neuron"
            if granularity in (kind, "head-neuron"):
                plan[f"{name}.{child_name}" if name else child_name] = (kind, axis if kind == "head" else -1)
    return plan
