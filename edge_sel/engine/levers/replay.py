"""Anchor replay (`--replay S`): every training step appends round(S x batch size) rows drawn from
the checkpoint's replay anchors (source images; the guard's held-out half is never drawn) to the
planned local batch, so the gradient keeps seeing the server's data.

The draw and its augmentation depend only on (seed, epoch, step): a resumed run draws the same rows
as one that was never interrupted, and a gate's own random draws never shift them. Replay rows are
trained and counted like any other (samples, FLOPs, joules); the strategy, the embarrassment meter
and the per-class statistics see only the local rows (they describe the local data)."""

from __future__ import annotations

import torch

from edge_sel.data import Batch, IndexedDataset
from edge_sel.data.augment import augment_by_sample, normalize

# Keeps the replay draw's stream apart from every other seeded draw of a run.
REPLAY_SEED_OFFSET = 1_000_003


def replay_rows(share: float, batch_size: int) -> int:
    return int(round(share * batch_size))


class AnchorReplay:
    def __init__(self, anchors: IndexedDataset, share: float, batch_size: int, seed: int, mean, std,
                 augment: bool, memory_format: torch.memory_format = torch.contiguous_format):
        self.anchors = anchors
        self.rows = min(replay_rows(share, batch_size), len(anchors)) if len(anchors) else 0
        self.seed = seed + REPLAY_SEED_OFFSET
        self.augment = augment
        self.memory_format = memory_format
        device = anchors.images.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)

    def positions(self, epoch: int, step: int) -> torch.Tensor:
        """Which anchors step `step` of epoch `epoch` replays (distinct within the step)."""
        draw = torch.Generator().manual_seed(self.seed * 1_000_033 + epoch * 7_919 + step)
        return torch.randperm(len(self.anchors), generator=draw)[:self.rows].to(self.anchors.images.device)

    def batch(self, epoch: int, step: int) -> Batch | None:
        if self.rows == 0:
            return None
        pos = self.positions(epoch, step)
        x = normalize(self.anchors.pixels(pos), self.mean, self.std)
        if self.augment:
            # Per (seed, step, anchor id): an anchor replayed twice in an epoch is cropped anew.
            x = augment_by_sample(x, self.anchors.augment, self.anchors.index[pos], self.seed, step)
        if x.dim() == 4 and self.memory_format != torch.contiguous_format:
            x = x.contiguous(memory_format=self.memory_format)
        return Batch(pos, self.anchors.index[pos], x, self.anchors.labels[pos])

    def append(self, local: Batch, epoch: int, step: int) -> Batch:
        """The local rows followed by this step's replay rows."""
        extra = self.batch(epoch, step)
        return local if extra is None else local.join(extra)
