"""Tiny transformer QANNs for the converter's tests (the zoo's ViT / Swin are bigger): one pre-LN ViT block with
HN-QCFS quantizers, a class token and a position embedding, and one shifted-window attention block with relative
position bias and a shift mask. Inputs ``(1, 8, 8)``."""

from __future__ import annotations

import torch
from torch import nn

from ann2snn.layers import QCFS, ClassToken, SignedQCFS

L = 4


def sq(n: int, dim: int, **kw) -> SignedQCFS:
    return SignedQCFS(L, alpha=1.0, granularity="head" if dim != -1 else "neuron", num_channels=n, dim=dim,
                      init_threshold=kw.pop("init", 2.0), **kw)


def uq(n: int, dim: int, **kw) -> QCFS:
    return QCFS(L, granularity="head" if dim != -1 else "neuron", num_channels=n, dim=dim,
                init_threshold=kw.pop("init", 1.0), **kw)


class Attention(nn.Module):
    """Multi-head self-attention on ``[B, N, D]`` with the batch kept at dim 0 (heads at dim 1)."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.h, self.dh, self.n = heads, dim // heads, tokens
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.qq, self.qk, self.qv = sq(heads, 1), sq(heads, 1), sq(heads, 1)
        self.qa, self.qo = uq(heads, 1, init=0.5), sq(heads, 1)
        self.scale = self.dh ** -0.5

    def forward(self, x):
        n = self.n
        q, k, v = self.qkv(x).reshape(-1, n, 3, self.h, self.dh).permute(0, 2, 3, 1, 4).unbind(1)
        q, k, v = self.qq(q), self.qk(k), self.qv(v)
        a = self.qa((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
        o = self.qo(a @ v)
        return self.proj(o.transpose(1, 2).reshape(-1, n, self.h * self.dh))


class TinyViT(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3, cls_token: bool = True) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.cls = ClassToken(dim) if cls_token else None
        self.pos = nn.Parameter(torch.randn(1, 4 + int(cls_token), dim) * 0.1)
        self.ln1, self.q1 = nn.LayerNorm(dim), sq(dim, -1)
        self.attn = Attention(dim, heads, 4 + int(cls_token))
        self.ln2, self.q2 = nn.LayerNorm(dim), sq(dim, -1)
        self.fc1, self.qh, self.fc2 = nn.Linear(dim, 2 * dim), uq(2 * dim, -1), nn.Linear(2 * dim, dim)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            x = self.cls(x)
        x = x + self.pos
        x = x + self.attn(self.q1(self.ln1(x)))
        x = x + self.fc2(self.qh(self.fc1(self.q2(self.ln2(x)))))
        x = self.norm(x)
        return self.head(x[:, 0] if self.cls is not None else x.mean(1))


class TinySwin(nn.Module):
    """Patch embedding to a 4×4 grid, one shifted-window attention block (windows 2×2 kept as their own dim),
    relative position bias from a table, a shift mask, patch merging by slicing, mean pooling."""

    input_shape = (1, 8, 8)

    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3, window: int = 2, shift: int = 1) -> None:
        super().__init__()
        self.dim, self.h, self.ws, self.shift, self.grid = dim, heads, window, shift, 4
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.ln1, self.q1 = nn.LayerNorm(dim), sq(dim, -1)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.qq, self.qk, self.qv = sq(heads, 2), sq(heads, 2), sq(heads, 2)
        self.qa, self.qo = uq(heads, 2, init=0.5), sq(heads, 2)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        img = torch.zeros(self.grid, self.grid)
        cnt = 0
        for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                img[hs, ws] = cnt
                cnt += 1
        win = self._windows(img[None, :, :, None], 1)[0, :, :, 0]  # [nW, N]
        mask = (win[:, :, None] != win[:, None, :]).float() * -100.0
        self.register_buffer("mask", mask[:, None])  # [nW, 1, N, N]
        self.merge_ln, self.merge = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def _windows(self, x, c):  # [B, G, G, C] -> [B, nW, ws*ws, C]
        g, w = self.grid, self.ws
        x = x.reshape(-1, g // w, w, g // w, w, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, (g // w) ** 2, w * w, c)

    def _unwindows(self, x, c):  # [B, nW, ws*ws, C] -> [B, G, G, C]
        g, w = self.grid, self.ws
        x = x.reshape(-1, g // w, g // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, g, g, c)

    def forward(self, x):
        x = self.patch(x).permute(0, 2, 3, 1)  # [B, 4, 4, C]
        h = self.q1(self.ln1(x))
        h = self._windows(torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2)), self.dim)  # [B, nW, N, C]
        nw, n = (self.grid // self.ws) ** 2, self.ws ** 2
        qkv = self.qkv(h).reshape(-1, nw, n, 3, self.h, self.dim // self.h).permute(0, 1, 3, 4, 2, 5)
        q, k, v = self.qq(qkv[:, :, 0]), self.qk(qkv[:, :, 1]), self.qv(qkv[:, :, 2])  # [B, nW, H, N, Dh]
        bias = self.table[self.index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)  # [H, N, N]
        a = (q @ k.transpose(-2, -1)) * (self.dim // self.h) ** -0.5 + bias
        a = self.qa((a + self.mask).softmax(dim=-1))
        o = self.qo(a @ v).permute(0, 1, 3, 2, 4).reshape(-1, nw, n, self.dim)
        o = torch.roll(self._unwindows(self.proj(o), self.dim), shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + o
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)  # [B, 2, 2, 4C]
        x = self.merge(self.merge_ln(x))
        return self.head(x.mean((1, 2)))
