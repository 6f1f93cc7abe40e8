"""A small CNN for edge devices: four conv-BN-ReLU stages and a linear head (~390k parameters)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class EdgeCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(32, 64, 128, 256)):
        super().__init__()
        w1, w2, w3, w4 = widths
        # Pooling after the first three stages: 32x32 -> 4x4 before the last conv; 8x8 digits -> 1x1.
        self.features = nn.Sequential(conv_bn(in_channels, w1, True), conv_bn(w1, w2, True),
                                      conv_bn(w2, w3, True), conv_bn(w3, w4, False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w4, num_classes)

    def blocks(self) -> list[nn.Module]:
        return [*self.features, self.fc]

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
