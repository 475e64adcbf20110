"""Fixtures for the onnxruntime exporter tests: tiny seeded zoo models with random BN statistics and thresholds."""

from __future__ import annotations

import pytest
from helpers import make_qann

import ann2snn


@pytest.fixture(scope="session")
def snns():
    """Converted SNNs by key (T = 4), built once per session."""
    cache = {}

    def get(key: str, T: int = 4):
        if (key, T) not in cache:
            cache[key, T] = ann2snn.convert(make_qann(key), T)
        return cache[key, T]

    return get
