"""ResNets with CIFAR stems (3×3 first conv, no stem max-pool), QCFS after every add as the seeds put it."""

from __future__ import annotations

from torch import nn

from ann2snn.models.common import ActSpec, act_spec
from ann2snn.models.registry import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, act: ActSpec) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act2 = act(cout)  # after the residual add

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, act: ActSpec) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = act(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act3 = act(cout)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """Stem conv3×3-BN-QCFS, stages of blocks, global average pool, linear classifier."""

    def __init__(self, block, blocks_per_stage, widths, *, num_classes=10, in_channels=3, act: ActSpec) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = act(widths[0])
        stages, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks_per_stage, widths)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(cin, w, stride, act))
                cin = w * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.input_shape = (in_channels, 32, 32)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = self.pool(x).flatten(1)
        return self.fc(x)


def _cifar_resnet(depth: int):
    n = (depth - 2) // 6

    def build(num_classes: int = 10, in_channels: int = 3, width: int = 16, **act_kw) -> nn.Module:
        return ResNet(BasicBlock, (n, n, n), (width, 2 * width, 4 * width),
                      num_classes=num_classes, in_channels=in_channels, act=act_spec(**act_kw))

    build.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016, 3 stages of {n} basic blocks)."
    return build


def _imagenet_style_resnet(depth: int, block, blocks):
    def build(num_classes: int = 10, in_channels: int = 3, width: int = 64, **act_kw) -> nn.Module:
        return ResNet(block, blocks, (width, 2 * width, 4 * width, 8 * width),
                      num_classes=num_classes, in_channels=in_channels, act=act_spec(**act_kw))

    build.__doc__ = f"ResNet-{depth} with a CIFAR stem (3×3 conv, no max-pool)."
    return build


for _depth in (20, 32, 56):
    register(f"resnet{_depth}")(_cifar_resnet(_depth))
register("resnet18")(_imagenet_style_resnet(18, BasicBlock, (2, 2, 2, 2)))
register("resnet34")(_imagenet_style_resnet(34, BasicBlock, (3, 4, 6, 3)))
register("resnet50")(_imagenet_style_resnet(50, Bottleneck, (3, 4, 6, 3)))
register("resnet101")(_imagenet_style_resnet(101, Bottleneck, (3, 4, 23, 3)))
