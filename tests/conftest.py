"""Shared fixtures: tiny seeded QANNs with non-trivial BN statistics and thresholds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.layers import QCFS

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tests/helpers.py and tests/fixtures are importable
torch.set_num_threads(min(2, os.cpu_count() or 1))


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, *, theta=(0.5, 2.0)) -> nn.Module:
    """Give BNs and QCFS thresholds seeded, non-trivial values (a freshly built model has θ and BN at 1)."""
    g = torch.Generator().manual_seed(seed)

    def u(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            u(m.running_mean, -0.3, 0.3)
            u(m.running_var, 0.5, 2.0)
            u(m.weight, 0.5, 1.5)
            u(m.bias, -0.2, 0.4)
        elif isinstance(m, QCFS):
            lo, hi = theta
            target = torch.rand(m.lam.shape, generator=g) * (hi - lo) + lo
            m.lam.copy_(ann2snn.layers.inverse_softplus(target) if m.positive == "softplus" else target)
    return model.eval()


@pytest.fixture
def tiny_models():
    """name -> builder of small zoo QANNs covering MLP, VGG, ResNet and max-pool structure."""
    return {
        "mlp": lambda **kw: ann2snn.models.create("mnist-mlp", hidden=32, **kw),
        "digits": lambda **kw: ann2snn.models.create("digits-cnn", channels=8, **kw),
        "vgg": lambda **kw: ann2snn.models.create("vgg16", width_mult=0.0625, classifier_width=16, **kw),
        "resnet": lambda **kw: ann2snn.models.create("resnet20", width=4, **kw),
        "maxpool": lambda **kw: ann2snn.models.create("mnist-cnn", pool="max", **kw),
    }
