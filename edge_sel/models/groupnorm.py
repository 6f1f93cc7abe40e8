"""A small CNN with GroupNorm instead of BatchNorm: normalisation that needs no batch statistics,
so it behaves the same at batch size 1, and there is nothing to re-estimate on new data."""

from __future__ import annotations

import torch
from torch import nn


def conv_gn(cin: int, cout: int, groups: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class GroupNormCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(32, 64, 128), groups: int = 8):
        super().__init__()
        w1, w2, w3 = widths
        self.stage1 = conv_gn(in_channels, w1, groups, True)
        self.stage2 = conv_gn(w1, w2, groups, True)
        self.stage3 = conv_gn(w2, w3, groups, False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
