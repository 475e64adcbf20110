"""Small networks: the digits CNN (the embedded default) and the seed's MNIST MLP and CNN."""

from __future__ import annotations

from torch import nn

from ann2snn.models.common import act_spec
from ann2snn.models.registry import register


def _conv_block(cin, cout, k, act, *, padding=0, bn=True):
    layers = [nn.Conv2d(cin, cout, k, padding=padding, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(act(cout))
    return layers


@register("digits-cnn")
def digits_cnn(num_classes: int = 10, channels: int = 16, **act_kw) -> nn.Module:
    """conv16-conv32-avgpool-linear for scikit-learn's 8×8 digits (input ``[B, 1, 8, 8]``)."""
    act = act_spec(**act_kw)
    c = channels
    net = nn.Sequential(
        *_conv_block(1, c, 3, act, padding=1),
        *_conv_block(c, 2 * c, 3, act, padding=1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * c * 16, num_classes),
    )
    net.input_shape = (1, 8, 8)
    return net


@register("mnist-mlp")
def mnist_mlp(num_classes: int = 10, hidden: int = 1200, **act_kw) -> nn.Module:
    """The seed's MLP 784-1200-1200-10 (input ``[B, 1, 28, 28]``)."""
    act = act_spec(**act_kw)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, hidden),
        nn.BatchNorm1d(hidden),
        act(hidden),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        act(hidden),
        nn.Linear(hidden, num_classes),
    )
    net.input_shape = (1, 28, 28)
    return net


@register("mnist-cnn")
def mnist_cnn(num_classes: int = 10, pool: str = "avg", **act_kw) -> nn.Module:
    """The seed's CNN 12c5-p2-64c5-p2-10 (input ``[B, 1, 28, 28]``)."""
    act = act_spec(**act_kw)
    pool_cls = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]
    net = nn.Sequential(
        *_conv_block(1, 12, 5, act),
        pool_cls(2),
        *_conv_block(12, 64, 5, act),
        pool_cls(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, num_classes),
    )
    net.input_shape = (1, 28, 28)
    return net


@register("mnist-convnet")
def mnist_convnet(num_classes: int = 10, **act_kw) -> nn.Module:
    """The benchmark net conv16-conv32-linear for MNIST: two 3×3 conv-BN-QCFS-avgpool2 blocks, one linear."""
    act = act_spec(**act_kw)
    net = nn.Sequential(
        *_conv_block(1, 16, 3, act, padding=1), nn.AvgPool2d(2),
        *_conv_block(16, 32, 3, act, padding=1), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, num_classes),
    )
    net.input_shape = (1, 28, 28)
    return net

