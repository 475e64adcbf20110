"""Shared fixtures: tiny seeded QANNs with non-trivial BN statistics and thresholds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import ann2snn

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tests/helpers.py is importable from every test module
torch.set_num_threads(min(2, os.cpu_count() or 1))


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


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path_factory, monkeypatch):
    """Run records written by commands under test go to a temporary directory, never into the checkout."""
    monkeypatch.setenv("ANN2SNN_RUNS", str(tmp_path_factory.mktemp("runs")))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state, so models built inside tests are the same every run."""
    torch.manual_seed(0)

