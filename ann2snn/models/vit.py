"""A vision transformer for small images with the seed's HN-QCFS quantizers (``vit-tiny``, ``vit-digits``).

Written to the transformer conversion contract (docs: ../shared/DESIGN.md §2): the batch stays at dim 0, forward
never reads ``x.shape``, token and head layouts use concrete sizes fixed at build time, attention is ``@`` and
``.softmax(dim=-1)``, the scale is a Python float, the position embedding a parameter added to the tokens and the
class token an :class:`ann2snn.layers.ClassToken`. Quantizers (:class:`~ann2snn.models.common.QuantSpec`):
signed neuron-wise after each LayerNorm feeding attention or the MLP, signed head-wise on q, k, v, unsigned
head-wise on the softmax output, signed head-wise on attn·V, unsigned neuron-wise on the MLP hidden layer in place
of GELU. The residual stream is not quantized.
"""

from __future__ import annotations

import torch
from torch import nn

from ann2snn.errors import Ann2SnnError
from ann2snn.layers import ClassToken
from ann2snn.models.common import QuantSpec, ZooTransformer, quant_spec
from ann2snn.models.registry import register

__all__ = ["VisionTransformer", "Attention", "Mlp", "TokenNorm", "vit_tiny", "vit_digits"]

#: Patch size when none is given: a 4×4 token grid for MNIST (28) and digits (8); 8×8 tokens for CIFAR (32).
DEFAULT_PATCH = {28: 7, 32: 4, 8: 2}

#: Initial θ of the softmax-output quantizer: attention probabilities lie in [0, 1].
ATTN_INIT_THRESHOLD = 1.0


class TokenNorm(nn.Module):
    """Normalization over the feature (last) dim: LayerNorm, or BatchNorm over features (MST's LN→BN option).

    BatchNorm is applied by moving the features to dim 1 (``transpose`` for ``[B, N, C]``, ``permute`` for
    ``[B, H, W, C]``) and back, so the batch never moves.
    """

    def __init__(self, features: int, norm: str = "ln", *, rank: int = 3) -> None:
        super().__init__()
        if norm not in ("ln", "bn"):
            raise Ann2SnnError(f"norm must be 'ln' (LayerNorm) or 'bn' (BatchNorm over features), got {norm!r}")
        if rank not in (3, 4):
            raise Ann2SnnError(f"TokenNorm takes [B, N, C] (rank 3) or [B, H, W, C] (rank 4) inputs, not rank {rank}")
        self.kind, self.rank = norm, rank
        self.norm = nn.LayerNorm(features) if norm == "ln" else (nn.BatchNorm1d(features) if rank == 3
                                                                 else nn.BatchNorm2d(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "ln":
            return self.norm(x)
        if self.rank == 3:
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention on quantized tokens ``[B, *, N, C]`` with head-wise quantizers.

    ``head_dim_axis`` is where the heads sit in the attention tensors: 1 for a ViT (``[B, H, N, Dh]``), 2 for a
    Swin window attention (``[B, nW, H, N, Dh]``). ``score_bias`` (a module returning a constant broadcastable to
    the scores, e.g. Swin's relative position bias plus shift mask) is added to the scaled scores before softmax.
    """

    def __init__(self, dim: int, heads: int, quant: QuantSpec, *, head_dim_axis: int = 1,
                 score_bias: nn.Module | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise Ann2SnnError(f"attention dim {dim} is not divisible by heads={heads}")
        self.heads, self.head_dim, self.head_dim_axis = heads, dim // heads, head_dim_axis
        self.scale = float(self.head_dim) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        ax = head_dim_axis
        self.quant_q = quant.head(heads, dim=ax, signed=True)
        self.quant_k = quant.head(heads, dim=ax, signed=True)
        self.quant_v = quant.head(heads, dim=ax, signed=True)
        self.quant_attn = quant.head(heads, dim=ax, signed=False, init_threshold=ATTN_INIT_THRESHOLD)
        self.quant_out = quant.head(heads, dim=ax, signed=True)
        self.score_bias = score_bias
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, *, N, C] -> [B, *, H, N, Dh]``."""
        ax = self.head_dim_axis
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(ax, ax + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quant_q(self._heads(self.q(x)))
        k = self.quant_k(self._heads(self.k(x)))
        v = self.quant_v(self._heads(self.v(x)))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if self.score_bias is not None:
            scores = scores + self.score_bias()
        attn = self.quant_attn(scores.softmax(dim=-1))
        out = self.quant_out(attn @ v)
        ax = self.head_dim_axis
        return self.proj(out.transpose(ax, ax + 1).flatten(-2))


class Mlp(nn.Module):
    """fc1 → unsigned neuron-wise QCFS (GELU in the plain ANN) → fc2."""

    def __init__(self, dim: int, hidden: int, quant: QuantSpec) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = quant.hidden(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(Q(norm1(x)))``, then ``x + mlp(Q(norm2(x)))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, quant: QuantSpec, norm: str) -> None:
        super().__init__()
        self.norm1 = TokenNorm(dim, norm)
        self.quant_norm1 = quant.neuron(dim, signed=True)
        self.attn = Attention(dim, heads, quant)
        self.norm2 = TokenNorm(dim, norm)
        self.quant_norm2 = quant.neuron(dim, signed=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.quant_norm1(self.norm1(x)))
        return x + self.mlp(self.quant_norm2(self.norm2(x)))


class VisionTransformer(ZooTransformer):
    """Patch conv → tokens ``[B, N, C]`` (+ class token) + position embedding → blocks → norm → pool → head.

    Linear layers keep PyTorch's default initialization, not the usual ViT truncated normal (std 0.02): with that,
    q, k, v and the MLP hidden values start below half a quantization step (θ = 2, L = 4), every quantizer outputs
    0 and the blocks stay dead for the first epochs (measured on digits: 21% vs 55% after four epochs).
    """

    def __init__(self, *, image_size: int, patch: int, in_channels: int, num_classes: int, dim: int, depth: int,
                 heads: int, mlp_ratio: float, cls_token: bool, norm: str, quant: QuantSpec) -> None:
        super().__init__()
        if image_size % patch:
            raise Ann2SnnError(f"patch {patch} does not divide image_size {image_size}; pick a patch size that "
                               "does (e.g. 7 for 28×28, 4 for 32×32, 2 for 8×8)")
        tokens = (image_size // patch) ** 2 + int(cls_token)
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls = ClassToken(dim) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, quant, norm) for _ in range(depth)))
        self.norm = TokenNorm(dim, norm)
        self.head = nn.Linear(dim, num_classes)
        self.input_shape = (in_channels, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # [B, N, C]
        if self.cls is not None:
            x = self.cls(x)
        x = self.blocks(x + self.pos)
        x = self.norm(x)
        return self.head(x[:, 0] if self.cls is not None else x.mean(dim=1))



def _vit(image_size, patch, in_channels, num_classes, dim, depth, heads, mlp_ratio, cls_token, norm, qkw):
    if patch is None:
        if image_size not in DEFAULT_PATCH:
            raise Ann2SnnError(f"no default patch size for image_size {image_size}; pass patch=P with P dividing it")
        patch = DEFAULT_PATCH[image_size]
    for name, v in (("image_size", image_size), ("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise Ann2SnnError(f"{name} must be a positive integer, got {v!r}")
    return VisionTransformer(image_size=image_size, patch=patch, in_channels=in_channels, num_classes=num_classes,
                             dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, cls_token=bool(cls_token),
                             norm=norm, quant=quant_spec(**qkw))


@register("vit-tiny")
def vit_tiny(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch: int | None = None,
             dim: int = 64, depth: int = 3, heads: int = 4, mlp_ratio: float = 2.0, cls_token: bool = False,
             norm: str = "ln", **quant_kw) -> nn.Module:
    """HN-QCFS ViT for small images: patch 7 on 28×28 (16 tokens), dim 64, 3 blocks of 4 heads, MLP ×2.

    Mean pooling over tokens unless ``cls_token``; ``norm="bn"`` is MST's LN→BN; quantizer options as
    :func:`ann2snn.models.common.quant_spec` (``levels``, ``granularity``, ``positive``, ``init_threshold``,
    ``act``, ...). ``patch`` defaults to 7 / 4 / 2 for 28 / 32 / 8 pixel images.
    """
    return _vit(image_size, patch, in_channels, num_classes, dim, depth, heads, mlp_ratio, cls_token, norm, quant_kw)


@register("vit-digits")
def vit_digits(num_classes: int = 10, in_channels: int = 1, image_size: int = 8, patch: int | None = 2,
               dim: int = 32, depth: int = 2, heads: int = 2, mlp_ratio: float = 2.0, cls_token: bool = False,
               norm: str = "ln", **quant_kw) -> nn.Module:
    """HN-QCFS ViT for 8×8 digits: patch 2 (16 tokens), dim 32, 2 blocks of 2 heads, MLP ×2."""
    return _vit(image_size, patch, in_channels, num_classes, dim, depth, heads, mlp_ratio, cls_token, norm, quant_kw)
