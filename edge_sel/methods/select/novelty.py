"""Novelty: how unlike the recently kept frames a candidate is, from a cheap input fingerprint.

A camera sends the same scene frame after frame; the loss-based significance of a never-trained frame
is the same for all of them (unseen scores 1), so only a signal that compares frames can see that the
tenth frame of a scene adds little. The fingerprint is the image average-pooled to a 4 x 4 grid per
channel, centred and scaled to unit length (a frame moved by a few pixels and with sensor noise keeps
a cosine above about 0.9 with its scene-mates on CIFAR-10; other scenes sit near 0.8). A candidate's
novelty is (1 - its largest cosine with the memory of recently kept frames) / radius, clipped to
[0, 1]: an exact duplicate scores 0, anything further than `radius` from all of them scores 1.

Every operation is counted in FLOPs (pooling sums, centring, norms, dot products) and charged as a
scoring cost by the gate that uses it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GRID = 4
RADIUS = 0.2        # cosine distance beyond which a frame counts as fully new


def fingerprints(images: torch.Tensor) -> torch.Tensor:
    """Unit-length, centred 4 x 4 average-pooled prints of uint8 N x C x H x W images (float32, CPU)."""
    x = F.adaptive_avg_pool2d(images.float().cpu(), min(GRID, *images.shape[-2:])).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)


def fingerprint_flops(n: int, shape: list[int]) -> int:
    """Pool sums (one add per pixel) and a divide per cell; mean and subtraction (2 per value); squares,
    sum and division for the length (3 per value)."""
    c, h, w = shape
    dim = c * min(GRID, h) * min(GRID, w)
    return n * (c * h * w + dim + 2 * dim + 3 * dim)


def print_dim(shape: list[int]) -> int:
    c, h, w = shape
    return c * min(GRID, h) * min(GRID, w)


def to_novelty(similarity: np.ndarray | torch.Tensor, radius: float = RADIUS):
    """1 - cosine, scaled by radius and clipped: 0 for an exact duplicate, 1 for a new scene."""
    return ((1 - similarity) / radius).clip(0, 1)


class NoveltyMemory:
    """The fingerprints of the last `size` kept frames (a ring buffer)."""

    def __init__(self, dim: int, size: int = 512):
        self.bank = torch.zeros(size, dim)
        self.count = 0          # frames remembered so far (the bank holds min(count, size))

    @property
    def filled(self) -> int:
        return min(self.count, len(self.bank))

    def nearest(self, prints: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Largest cosine of each print with the memory (-1 when empty), and the FLOPs it took."""
        m = self.filled
        if m == 0:
            return torch.full((len(prints),), -1.0), 0
        return (prints @ self.bank[:m].T).max(1).values, 2 * len(prints) * m * prints.shape[1]

    def remember(self, prints: torch.Tensor) -> None:
        size = len(self.bank)
        for p in prints[-size:]:
            self.bank[self.count % size] = p
            self.count += 1

    def state_dict(self) -> dict:
        return {"bank": self.bank.clone(), "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.bank = state["bank"].clone().float()
        self.count = int(state["count"])
