"""Novelty: how unlike the recently kept frames a candidate is, from a cheap input fingerprint.

A camera sends the same scene frame after frame; the loss-based significance of a never-trained frame
is the same for all of them (unseen scores 1), so only a signal that compares frames can see that the
tenth frame of a scene adds little. The fingerprint is the log magnitude of the image's lowest
spatial frequencies (grey level, a 2K x K block of the 2-D discrete Fourier transform, K = 4):
a magnitude spectrum does not change when the picture moves, so a frame moved by a few pixels
and with sensor noise keeps a cosine above about 0.95 with its scene-mates (CIFAR-10 and digits),
while the nearest of 512 other scenes sits near 0.9 or below. The transform is computed as four
small matrix products with cosine and sine tables, so its FLOPs are exact counts, not an estimate.

A candidate's novelty is (1 - its largest cosine with the memory of recently kept frames) / radius,
clipped to [0, 1]: an exact duplicate scores 0, anything further than `radius` from all of them
scores 1. Every operation is counted and charged as a scoring cost by the gate that uses it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FREQUENCIES = 4     # K: rows 0..K-1 and -K..-1, columns 0..K-1 of the spectrum
RADIUS = 0.1        # cosine distance beyond which a frame counts as fully new


def _k(shape: list[int]) -> int:
    return max(1, min(FREQUENCIES, shape[-2] // 2, shape[-1]))


def print_dim(shape: list[int]) -> int:
    k = _k(shape)
    return 2 * k * k


def _tables(h: int, w: int, k: int):
    rows = torch.tensor(list(range(k)) + list(range(h - k, h)), dtype=torch.float64)
    cols = torch.arange(k, dtype=torch.float64)
    a = 2 * math.pi * rows[:, None] * torch.arange(h, dtype=torch.float64)[None] / h     # 2K x H
    b = 2 * math.pi * torch.arange(w, dtype=torch.float64)[:, None] * cols[None] / w      # W x K
    return a.cos().float(), a.sin().float(), b.cos().float(), b.sin().float()


def fingerprints(images: torch.Tensor) -> torch.Tensor:
    """Unit-length, centred low-frequency log-magnitude prints of uint8 N x C x H x W images (CPU)."""
    x = images.float().cpu().mean(1) / 255                  # N x H x W grey
    h, w = x.shape[-2:]
    k = _k(list(images.shape[1:]))
    cr, sr, cc, sc = _tables(h, w, k)
    p, q = cr @ x, sr @ x                                   # N x 2K x W
    re = p @ cc - q @ sc                                    # real part of (C - iS) x (C - iS)
    im = p @ sc + q @ cc                                    # minus the imaginary part (its square is the same)
    f = torch.log1p((re * re + im * im).sqrt()).flatten(1)
    f = f - f.mean(1, keepdim=True)
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-6)


def fingerprint_flops(n: int, shape: list[int]) -> int:
    """Per image: the grey mean (C x H x W), two 2K x H by H x W products, four 2K x W by W x K
    products and their two sums, magnitude (square, square, add, root), log, then centring (2 per
    value) and length (3 per value)."""
    c, h, w = shape
    k = _k(shape)
    d = 2 * k * k
    return n * (c * h * w + 2 * (2 * 2 * k * h * w) + 4 * (2 * 2 * k * w * k) + 2 * d + 4 * d + d + 2 * d + 3 * d)


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
