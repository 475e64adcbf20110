"""Test helpers shared across modules."""

from __future__ import annotations

import torch
from torch import nn

import ann2snn
from ann2snn.layers import qcfs_modules


class Fn(nn.Module):
    """A functional call inside a model (traced through: it becomes a call_function / call_method node)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


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


def randomize(model: nn.Module, seed: int = 0, *, theta=(0.5, 2.0)) -> nn.Module:
    """Give BNs and QCFS thresholds seeded, non-trivial values (a freshly built model has θ and BN at 1)."""
    return ann2snn.models.randomize(model, seed, theta=theta)


#: small zoo QANNs by key: MLP, VGG, ResNet, the digits CNN and a max-pool CNN
MODELS = {
    "mlp": ("mnist-mlp", {"hidden": 32}),
    "vgg": ("vgg16", {"width_mult": 0.125, "classifier_width": 32}),
    "resnet": ("resnet20", {"width": 4}),
    "digits": ("digits-cnn", {}),
    "maxpool": ("mnist-cnn", {"pool": "max"}),
}


def make_qann(key: str, *, levels: int = 4, seed: int = 0, input_shape=None, **kw) -> nn.Module:
    """A zoo QANN (see :data:`MODELS`) with seeded random BN statistics and thresholds, in eval mode."""
    arch, base = MODELS[key]
    torch.manual_seed(seed)  # the weights too, not only BN and thresholds: fixtures must not change between runs
    model = randomize(ann2snn.models.create(arch, levels=levels, **{**base, **kw}), seed=seed, theta=(0.3, 1.5))
    if input_shape is not None:
        model.input_shape = input_shape
    return model
