"""Index-aware batches straight from the device-resident uint8 tensors: no DataLoader, no workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from edge_sel.data.augment import augment_batch, normalize
from edge_sel.data.dataset import IndexedDataset


@dataclass
class Batch:
    positions: torch.Tensor   # positions in the dataset (long, on the data's device)
    index: torch.Tensor       # stable sample ids
    x: torch.Tensor           # normalised, augmented float inputs
    y: torch.Tensor
    weight: torch.Tensor | None = None   # per-sample loss weights (None: all ones)


class BatchLoader:
    """Batches of an arbitrary position list (a strategy's plan), normalised and augmented."""

    def __init__(self, ds: IndexedDataset, mean, std, batch_size: int, augment: bool,
                 generator: torch.Generator):
        self.ds = ds
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=ds.images.device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=ds.images.device)
        self.batch_size = batch_size
        self.augment = augment
        self.generator = generator

    def batches(self, positions: torch.Tensor, weights: torch.Tensor | None = None,
                start: int = 0) -> Iterator[Batch]:
        positions = positions.to(self.ds.images.device)
        if weights is not None:
            weights = weights.to(self.ds.images.device)
        for lo in range(start, len(positions), self.batch_size):
            pos = positions[lo: lo + self.batch_size]
            x = normalize(self.ds.images[pos], self.mean, self.std)
            if self.augment:
                x = augment_batch(x, self.ds.augment, self.generator)
            w = None if weights is None else weights[lo: lo + self.batch_size]
            yield Batch(pos, self.ds.index[pos], x, self.ds.labels[pos], w)

    def num_batches(self, n: int) -> int:
        return (n + self.batch_size - 1) // self.batch_size
