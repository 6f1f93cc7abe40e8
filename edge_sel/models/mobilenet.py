"""MobileNetV2-style network for small images: inverted residual blocks (1x1 expansion,
3x3 depthwise, linear 1x1 projection), BatchNorm, ReLU6 and a width multiplier.

The ImageNet network divides its input by 32; on 32x32 images that leaves 1x1 maps before the last
stage. Here the stem is a stride-1 3x3 convolution and the first 24-channel stage keeps stride 2,
so CIFAR-sized inputs end at 2x2 (8x8 digits at 1x1).
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2's seven stages.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def scaled(channels: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of 8, never more than 10% below the unrounded width."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn_act(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),     # depthwise
                   conv_bn_act(hidden, cout, 1, act=False)]                   # linear bottleneck
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        width_mult = float(width_mult)
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        cin = scaled(32 * width_mult)
        self.stem = conv_bn_act(in_channels, cin, 3)
        blocks = []
        for t, c, n, s in STAGES:
            cout = scaled(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.features = nn.Sequential(*blocks)
        last = scaled(1280 * max(1.0, width_mult))
        self.head_conv = conv_bn_act(cin, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(float(dropout))
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.head_conv(self.features(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
