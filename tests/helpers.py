"""Test helpers shared across modules."""

from __future__ import annotations

import torch
from torch import nn

from ann2snn.layers import qcfs_modules


@torch.no_grad()
def quantized_levels(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every QCFS output of ``model`` on ``x`` as integer levels ``round(y·L/θ)``."""
    out = []
    hooks = [q.register_forward_hook(
        lambda mod, i, o: out.append(torch.round(o * mod.levels / mod.broadcast_threshold(o.dim()))))
        for _, q in qcfs_modules(model)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def level_mismatch_fraction(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of quantized activations that differ between two runs (floor ties flip by rounding only)."""
    assert len(a) == len(b)
    diff = sum(int((x != y).sum()) for x, y in zip(a, b))
    return diff / max(1, sum(x.numel() for x in a))
