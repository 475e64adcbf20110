"""Scales of values (``actual = scale ⊙ stored``) and how weighted ops take them into their weights.

A scale is a tensor broadcastable to one sample (``[1, C, 1, 1]``, ``[1, F]``), or None for 1 everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from ann2snn.ops.base import ScaleRule

__all__ = ["Scale", "compact", "full", "same", "only_along", "CONV_SCALE", "LINEAR_SCALE", "AFFINE_SCALE"]

Scale = torch.Tensor | None  # None means 1 everywhere


def compact(t: torch.Tensor) -> Scale:
    """Shrink every dim along which ``t`` is constant to size 1; ``None`` if ``t`` is all ones."""
    for d in range(t.dim()):
        if t.size(d) > 1 and bool(torch.all(t == t.narrow(d, 0, 1))):
            t = t.narrow(d, 0, 1)
    return None if bool(torch.all(t == 1)) else t.contiguous()


def full(s: Scale, shape) -> torch.Tensor:
    """``s`` broadcast to one sample of ``shape`` (batch dim 1)."""
    sample = (1, *shape[1:])
    return torch.ones(sample) if s is None else torch.broadcast_to(s, sample)


def same(a: Scale, b: Scale, shape) -> bool:
    if a is None and b is None:
        return True
    return bool(torch.equal(full(a, shape), full(b, shape)))


def only_along(s: Scale, ndim: int, dim: int | None) -> torch.Tensor | None:
    """``s`` as a vector along ``dim`` (or a scalar) if it is constant along every other dim, else None."""
    if s is None:
        return torch.ones(1)
    s = s.reshape([1] * (ndim - s.dim()) + list(s.shape)) if s.dim() < ndim else s
    others = [d for d in range(ndim) if d != (dim % ndim if dim is not None else None)]
    if any(s.size(d) != 1 for d in others):
        return None
    return s.reshape(-1)


# --- conv / linear: a scale along the channel dim goes into weight columns (input) or rows (output) ------------


@torch.no_grad()
def _scale_rows(m: nn.Module, vec: torch.Tensor) -> None:
    w = m.weight
    if vec.numel() == 1:
        w.mul_(vec.item())
        if m.bias is not None:
            m.bias.mul_(vec.item())
        return
    w.mul_(vec.reshape([-1] + [1] * (w.dim() - 1)))
    if m.bias is not None:
        m.bias.mul_(vec)


@torch.no_grad()
def _add_bias(m: nn.Module, b: torch.Tensor) -> None:
    bias = m.bias.detach() + b if m.bias is not None else b.detach()
    m.bias = nn.Parameter(bias.clone().to(m.weight.dtype))


def _weighted_rule(channel_dim: int, scale_columns) -> ScaleRule:
    def absorb_input(m: nn.Module, s: Scale, in_shape) -> bool:
        vec = only_along(s, len(in_shape), channel_dim)
        if vec is None:
            return False
        if s is not None:
            scale_columns(m, vec)
        return True

    def scale_output(m: nn.Module, r: Scale, out_shape) -> bool:
        vec = only_along(r, len(out_shape), channel_dim)
        if vec is None:
            return False
        if r is not None:
            _scale_rows(m, vec)
        return True

    return ScaleRule(absorb_input=absorb_input, scale_output=scale_output, add_bias=_add_bias)


@torch.no_grad()
def _conv_columns(m: nn.Module, vec: torch.Tensor) -> None:
    w = m.weight
    if vec.numel() == 1:
        w.mul_(vec.item())
        return
    g, cin_g = m.groups, w.shape[1]  # grouped conv: input channel c is column c % cin_g of group c // cin_g
    w.view(g, w.shape[0] // g, cin_g, *w.shape[2:]).mul_(vec.reshape(g, 1, cin_g, *([1] * (w.dim() - 2))))


@torch.no_grad()
def _linear_columns(m: nn.Module, vec: torch.Tensor) -> None:
    m.weight.mul_(vec.item() if vec.numel() == 1 else vec.reshape(1, -1))


#: Conv1d / Conv2d: channels are dim 1 of the values
CONV_SCALE = _weighted_rule(1, _conv_columns)
#: Linear: features are the last dim of the values
LINEAR_SCALE = _weighted_rule(-1, _linear_columns)


# --- Affine (y = w ⊙ x + b, broadcastable buffers): any scale goes into w (and b) elementwise ---------------------


def _affine_absorb(m: nn.Module, s: Scale, in_shape) -> bool:
    if s is not None:
        m.weight = m.weight * s
    return True


def _affine_scale_output(m: nn.Module, r: Scale, out_shape) -> bool:
    if r is not None:
        m.weight = m.weight * r
        if m.bias is not None:
            m.bias = m.bias * r
    return True


def _affine_add_bias(m: nn.Module, b: torch.Tensor) -> None:
    b = b.reshape([1, -1] + [1] * (m.weight.dim() - 2)) if m.weight.dim() >= 2 else b
    m.bias = b.clone() if m.bias is None else m.bias + b


AFFINE_SCALE = ScaleRule(absorb_input=_affine_absorb, scale_output=_affine_scale_output, add_bias=_affine_add_bias)
