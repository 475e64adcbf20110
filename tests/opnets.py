"""Tiny seeded-by-the-caller QANNs that exercise one operator each: shared by the registry, every-op ONNX parity and
NIR tests (inputs ``(2, 6, 6)`` unless a case says otherwise)."""

from __future__ import annotations

import torch
from torch import nn

from ann2snn.layers import QCFS

L = 4


def q(c: int | None = None, **kw) -> QCFS:
    """A QCFS with per-channel thresholds (randomized by the test), or one threshold."""
    return QCFS(L, granularity="channel", num_channels=c, **kw) if c else QCFS(L, **kw)


def conv(cin=2, cout=4, k=3, **kw) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, **kw)


def seq(*layers, input_shape=(2, 6, 6)) -> nn.Sequential:
    net = nn.Sequential(*layers)
    net.input_shape = input_shape
    return net


class Residual(nn.Module):
    """Two adds: ``a + b`` with different per-channel θ on the two sides, and the join of two neurons' outputs."""

    input_shape = (2, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.q1, self.c2, self.q2 = conv(), q(4), conv(4, 4), q(4)
        self.c3, self.q3, self.fc = conv(4, 4), q(4), nn.Linear(4 * 36, 3)

    def forward(self, x):
        a = self.q1(self.c1(x))
        b = self.q2(self.c2(a))
        return self.fc(torch.flatten(self.q3(self.c3(a + b)) + b, 1))
