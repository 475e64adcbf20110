"""A Swin transformer for small images with the seed's HN-QCFS quantizers (``swin-tiny``, ``swin-digits``).

Written to the transformer conversion contract, like :mod:`ann2snn.models.vit`: tokens stay ``[B, H, W, C]``
between blocks; window attention keeps the windows as their own dim (``[B, nW, N, C]``, attention tensors
``[B, nW, heads, N, Dh]`` with head-wise thresholds along dim 2) and never merges them into the batch; shifted
windows are ``torch.roll`` on the spatial dims; the relative position bias is a learned table read through a
registered index buffer (a constant expression) and the shift mask a registered buffer (−100, not −inf, so a
softmax row never sees only −inf); patch merging is four strided slices, ``torch.cat``, a norm and a linear.
"""

from __future__ import annotations

import torch
from torch import nn

from ann2snn.errors import Ann2SnnError
from ann2snn.models.common import QuantSpec, ZooTransformer, quant_spec
from ann2snn.models.registry import register
from ann2snn.models.vit import Attention, Mlp, TokenNorm

__all__ = ["SwinTransformer", "WindowBias", "SwinBlock", "PatchMerging", "swin_tiny", "swin_digits",
           "relative_position_index", "shift_mask"]

#: What the shift mask adds to scores between tokens from different image regions (−inf would give NaN rows).
MASK_VALUE = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """``[N·N]`` indices into a ``((2w−1)², heads)`` table: the relative offset of every token pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).reshape(-1)


def window_partition(x: torch.Tensor, res: int, window: int, channels: int) -> torch.Tensor:
    """``[B, R, R, C] -> [B, nW, w·w, C]`` (windows in row-major order; every size but the batch concrete)."""
    n = res // window
    return x.reshape(-1, n, window, n, window, channels).transpose(2, 3).reshape(-1, n * n, window * window, channels)


def window_merge(x: torch.Tensor, res: int, window: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, w·w, C] -> [B, R, R, C]``."""
    n = res // window
    return x.reshape(-1, n, n, window, window, channels).transpose(2, 3).reshape(-1, res, res, channels)


def shift_mask(res: int, window: int, shift: int) -> torch.Tensor:
    """``[nW, 1, N, N]``: 0 between tokens of the same region of the rolled image, :data:`MASK_VALUE` otherwise."""
    regions = torch.zeros(1, res, res, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for h in cuts:
        for w in cuts:
            regions[:, h, w, :] = label
            label += 1
    win = window_partition(regions, res, window, 1).reshape(-1, window * window)  # [nW, N]
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, MASK_VALUE, 0.0).unsqueeze(1)


class WindowBias(nn.Module):
    """The constant added to a window's attention scores: relative position bias ``[H, N, N]`` (+ shift mask).

    ``forward()`` takes no input: it is an expression of the learned ``table``, the ``index`` buffer and the
    ``mask`` buffer only, which conversion folds into a constant.
    """

    def __init__(self, window: int, heads: int, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n, self.heads = window * window, heads
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", relative_position_index(window))
        self.register_buffer("mask", mask)

    def forward(self) -> torch.Tensor:
        bias = self.table[self.index].reshape(self.n, self.n, self.heads).permute(2, 0, 1)
        return bias if self.mask is None else bias + self.mask


class SwinBlock(nn.Module):
    """(Shifted) window attention and MLP on ``[B, R, R, C]``, pre-norm, with HN-QCFS quantizers."""

    def __init__(self, dim: int, res: int, heads: int, window: int, shift: int, mlp_ratio: float, quant: QuantSpec,
                 norm: str) -> None:
        super().__init__()
        if res <= window:  # the window covers the whole map: one window, nothing to shift
            window, shift = res, 0
        if res % window:
            raise Ann2SnnError(f"window {window} does not divide the token grid {res}×{res}")
        self.dim, self.res, self.window, self.shift = dim, res, window, shift
        self.norm1 = TokenNorm(dim, norm, rank=4)
        self.quant_norm1 = quant.neuron(dim, signed=True)
        mask = shift_mask(res, window, shift) if shift else None
        self.attn = Attention(dim, heads, quant, head_dim_axis=2, score_bias=WindowBias(window, heads, mask))
        self.norm2 = TokenNorm(dim, norm, rank=4)
        self.quant_norm2 = quant.neuron(dim, signed=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.quant_norm1(self.norm1(x))
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        h = window_merge(self.attn(window_partition(h, self.res, self.window, self.dim)), self.res, self.window,
                         self.dim)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h
        return x + self.mlp(self.quant_norm2(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"res={self.res}, window={self.window}, shift={self.shift}"


class PatchMerging(nn.Module):
    """``[B, R, R, C] -> [B, R/2, R/2, 2C]``: the four 2×2 neighbours side by side, norm, linear (no bias)."""

    def __init__(self, dim: int, norm: str) -> None:
        super().__init__()
        self.norm = TokenNorm(4 * dim, norm, rank=4)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]], dim=-1)
        return self.reduction(self.norm(x))


class SwinTransformer(ZooTransformer):
    """Patch conv → ``[B, R, R, C]`` → stages of Swin blocks with patch merging between → norm → mean → head.

    Linear layers keep PyTorch's default initialization, for the reason given in :class:`VisionTransformer`.
    """

    def __init__(self, *, image_size: int, patch: int, padding: int, in_channels: int, num_classes: int, dim: int,
                 depths: tuple[int, ...], heads: tuple[int, ...], window: int, mlp_ratio: float, norm: str,
                 quant: QuantSpec) -> None:
        super().__init__()
        res = (image_size + 2 * padding) // patch
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch, padding=padding)
        self.embed_norm = TokenNorm(dim, norm, rank=4)
        stages = []
        for i, (depth, h) in enumerate(zip(depths, heads)):
            blocks = [SwinBlock(dim, res, h, window, (window // 2) * (j % 2), mlp_ratio, quant, norm)
                      for j in range(depth)]
            if i + 1 < len(depths):
                blocks.append(PatchMerging(dim, norm))
                dim, res = 2 * dim, res // 2
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = TokenNorm(dim, norm, rank=4)
        self.head = nn.Linear(dim, num_classes)
        self.input_shape = (in_channels, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))  # [B, R, R, C]
        x = self.norm(self.stages(x))
        return self.head(x.mean(dim=(1, 2)))



def _grid_padding(image_size: int, patch: int, window: int, stages: int) -> int:
    """The least padding making the token grid divisible by the patch, the window and every patch merging."""
    for pad in range(patch * window * 2 ** stages):
        if (image_size + 2 * pad) % patch:
            continue
        res = (image_size + 2 * pad) // patch
        sizes = [res // 2 ** i for i in range(stages)]
        if res % 2 ** (stages - 1) == 0 and all(r % min(window, r) == 0 for r in sizes):
            return pad
    raise Ann2SnnError(f"no padding fits image_size {image_size}, patch {patch}, window {window} and {stages} stages")


def _swin(image_size, patch, in_channels, num_classes, dim, depths, heads, window, mlp_ratio, norm, qkw):
    depths, heads = tuple(depths), tuple(heads)
    if len(depths) != len(heads) or not depths:
        raise Ann2SnnError(f"depths {depths} and heads {heads} must name the same number (≥ 1) of stages")
    for name, v in (("image_size", image_size), ("patch", patch), ("dim", dim), ("window", window),
                    *(("depths", d) for d in depths), *(("heads", h) for h in heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise Ann2SnnError(f"{name} must be positive integers, got {v!r}")
    pad = _grid_padding(image_size, patch, window, len(depths))
    return SwinTransformer(image_size=image_size, patch=patch, padding=pad, in_channels=in_channels,
                           num_classes=num_classes, dim=dim, depths=depths, heads=heads, window=window,
                           mlp_ratio=mlp_ratio, norm=norm, quant=quant_spec(**qkw))


@register("swin-tiny")
def swin_tiny(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch: int = 4, dim: int = 32,
              depths: tuple[int, ...] = (2, 2), heads: tuple[int, ...] = (2, 4), window: int = 4,
              mlp_ratio: float = 2.0, norm: str = "ln", **quant_kw) -> nn.Module:
    """HN-QCFS Swin for small images: 28×28 padded to 32, patch 4 → 8×8 tokens, window 4, dims 32/64, heads 2/4.

    Stage 1 alternates plain and shifted (by 2) windows; patch merging to 4×4 tokens, where one window covers the
    map. Options as :func:`ann2snn.models.vit.vit_tiny`; the image is zero-padded to fit the windows.
    """
    return _swin(image_size, patch, in_channels, num_classes, dim, depths, heads, window, mlp_ratio, norm, quant_kw)


@register("swin-digits")
def swin_digits(num_classes: int = 10, in_channels: int = 1, image_size: int = 8, patch: int = 2, dim: int = 16,
                depths: tuple[int, ...] = (2, 2), heads: tuple[int, ...] = (2, 2), window: int = 2,
                mlp_ratio: float = 2.0, norm: str = "ln", **quant_kw) -> nn.Module:
    """HN-QCFS Swin for 8×8 digits: patch 2 → 4×4 tokens, window 2 (shift 1), dims 16/32, heads 2/2."""
    return _swin(image_size, patch, in_channels, num_classes, dim, depths, heads, window, mlp_ratio, norm, quant_kw)
