"""Small fixtures for the SEL tests: a tiny dataset, model and run context without a trainer."""

from __future__ import annotations

import torch
from torch import nn

from edge_sel.data import IndexedDataset
from edge_sel.methods.base import RunContext


class TinyNet(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, linear: three blocks, like the real models' blocks()."""

    def __init__(self, num_classes=4, in_channels=3, width=8):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def blocks(self):
        return [self.b1, self.b2, self.fc]

    def forward(self, x):
        return self.fc(self.b2(self.b1(x)))


def tiny_dataset(num_classes=4, per_class=30, size=8, seed=0) -> IndexedDataset:
    g = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    labels = torch.arange(n) % num_classes
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return IndexedDataset(images, labels, torch.arange(n) + 1000, [f"c{c}" for c in range(num_classes)],
                          "tiny", {"crop_pad": 1, "flip": True})


def tiny_context(num_classes=4, per_class=30, epochs=10, batch_size=16, model=None, score_fn=None,
                 seed=0) -> RunContext:
    torch.manual_seed(seed)
    train = tiny_dataset(num_classes, per_class, seed=seed)
    val = tiny_dataset(num_classes, 5, seed=seed + 1)
    model = model or TinyNet(num_classes)
    return RunContext(train, val, model, epochs, torch.Generator().manual_seed(seed), torch.device("cpu"),
                      [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], batch_size,
                      {"seed": seed, "augment": True, "method": {}}, score_fn=score_fn)
