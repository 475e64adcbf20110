"""VGG-16 for CIFAR as in the QCFS paper: conv-BN-QCFS blocks, average pooling, a 3-layer classifier."""

from __future__ import annotations

from torch import nn

from ann2snn.models.common import act_spec
from ann2snn.models.registry import register

_CFG16 = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P")


@register("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, classifier_width: int = 4096,
          pool: str = "avg", dropout: float = 0.5, **act_kw) -> nn.Module:
    """VGG-16 (input ``[B, 3, 32, 32]``); ``width_mult`` scales every conv width (tests use small ones)."""
    act = act_spec(**act_kw)
    pool_cls = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]
    layers, cin = [], in_channels
    for v in _CFG16:
        if v == "P":
            layers.append(pool_cls(2))
            continue
        c = max(1, int(v * width_mult))
        layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), act(c)]
        cin = c
    w = classifier_width
    layers += [
        nn.Flatten(),
        nn.Linear(cin, w), act(w), nn.Dropout(dropout),
        nn.Linear(w, w), act(w), nn.Dropout(dropout),
        nn.Linear(w, num_classes),
    ]
    net = nn.Sequential(*layers)
    net.input_shape = (in_channels, 32, 32)
    return net
