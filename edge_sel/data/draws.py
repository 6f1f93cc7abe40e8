"""Per-sample random numbers from a hash of a sample's stable id: the same sample gets the same
draw in any subset, order or batch, and nothing else's draws move it (no shared stream)."""

from __future__ import annotations

import torch


def sample_uniform(index: torch.Tensor, seed: int, salt: int) -> torch.Tensor:
    """A number in [0, 1) per sample (float64, on the index's device) from (seed, salt, id) alone."""
    offset = (seed * 1442695040888963407 + salt * 0x1E3779B97F4A7C15 + 1) % (1 << 62)
    x = (index.long() + offset) * 6364136223846793005 & 0x7FFFFFFFFFFFFFFF     # wraps like uint64
    for shift, mult in ((31, 0x3F58476D1CE4E5B9), (29, 0x14D049BB133111EB)):
        x = ((x ^ (x >> shift)) * mult) & 0x7FFFFFFFFFFFFFFF
    x = x ^ (x >> 32)
    return (x & 0xFFFFFF).double() / float(1 << 24)
