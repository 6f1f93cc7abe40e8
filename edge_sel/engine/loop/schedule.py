"""Learning rate as a function of training progress (0..1), set on the optimizer every step.

A function of progress rather than of step count keeps gated and dense runs on the same schedule
even though a gated epoch has fewer steps (rule 4: the random control shares the schedule)."""

from __future__ import annotations

import math


def lr_factor(schedule: str, progress: float, warmup: float = 0.0) -> float:
    """Multiplier on the base learning rate; `warmup` is a share of training (0..1)."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return (progress + 1e-8) / warmup
    if schedule == "constant":
        return 1.0
    rest = (progress - warmup) / max(1e-8, 1 - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    if schedule == "linear":
        return 1 - rest
    if schedule == "step":
        return 0.1 ** sum(rest >= m for m in (0.5, 0.75))
    raise ValueError(schedule)
