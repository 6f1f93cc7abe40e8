"""Index-aware batches straight from the device-resident uint8 tensors: no DataLoader, no workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from edge_sel.data.augment import augment_batch, augment_by_sample, normalize
from edge_sel.data.dataset import IndexedDataset


@dataclass
class Batch:
    positions: torch.Tensor   # positions in the dataset (long, on the data's device)
    index: torch.Tensor       # stable sample ids
    x: torch.Tensor           # normalised, augmented float inputs
    y: torch.Tensor
    weight: torch.Tensor | None = None   # per-sample loss weights (None: all ones)

    def __len__(self) -> int:
        return len(self.y)

    def join(self, other: "Batch") -> "Batch":
        """This batch's rows followed by `other`'s (a single row carried to the next step)."""
        if (self.weight is None) != (other.weight is None):
            ones = torch.ones(len(self.y if self.weight is None else other.y), device=self.y.device)
            w = torch.cat([ones, other.weight] if self.weight is None else [self.weight, ones])
        else:
            w = None if self.weight is None else torch.cat([self.weight, other.weight])
        return Batch(torch.cat([self.positions, other.positions]), torch.cat([self.index, other.index]),
                     torch.cat([self.x, other.x]), torch.cat([self.y, other.y]), w)


class BatchLoader:
    """Batches of an arbitrary position list (a strategy's plan), normalised and augmented."""

    def __init__(self, ds: IndexedDataset, mean, std, batch_size: int, augment: bool,
                 generator: torch.Generator, memory_format: torch.memory_format = torch.contiguous_format,
                 augment_seed: int | None = None):
        self.ds = ds
        # With a seed, augmentation is drawn per sample from (seed, epoch, id) instead of `generator`.
        self.augment_seed = augment_seed
        self.epoch = 0
        self.memory_format = memory_format     # channels_last where it measured faster (engine.layout)
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
        starts = self.batch_starts(len(positions))
        for lo, hi in zip(starts, starts[1:] + [len(positions)]):
            if lo < start:
                continue
            pos = positions[lo: hi]
            pixels = self.ds.pixels(pos)
            # A reflected crop and a mirror only move pixels, so they give the same bits before the
            # normalisation as after it, on a quarter of the bytes (a zero pad does not: it pads the mean).
            pad = int(self.ds.augment.get("crop_pad", 0))
            early = self.augment and pixels.dim() == 4 and min(pixels.shape[-2:]) > pad
            if early:
                pixels = self._augmented(pixels, pos)
            x = normalize(pixels, self.mean, self.std)
            if self.augment and not early:
                x = self._augmented(x, pos)
            if x.dim() == 4 and self.memory_format != torch.contiguous_format:
                x = x.contiguous(memory_format=self.memory_format)
            w = None if weights is None else weights[lo: hi]
            yield Batch(pos, self.ds.index[pos], x, self.ds.labels[pos], w)

    def _augmented(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.augment_seed is not None:
            return augment_by_sample(x, self.ds.augment, self.ds.index[pos], self.augment_seed, self.epoch)
        return augment_batch(x, self.ds.augment, self.generator)

    def batch_starts(self, n: int) -> list[int]:
        """Where each batch of n planned samples starts. A last batch of one sample is merged into
        the one before it: BatchNorm cannot train on a single sample."""
        starts = list(range(0, n, self.batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        return starts

    def num_batches(self, n: int) -> int:
        return len(self.batch_starts(n))
