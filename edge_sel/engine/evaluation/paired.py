"""Whether two models' accuracies on the same images differ by more than chance: the exact McNemar
test on the images where one is right and the other wrong. Images both get right (or both wrong)
say nothing about which is better; on 40 validation images, one image apart is one discordant
image, which no test at 95% can call a difference."""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import torch

LEVEL = 0.05        # two-sided: a difference is resolved when chance would show one as large less often


@dataclass
class Paired:
    first_only: int         # images the first model gets right and the second wrong
    second_only: int        # the reverse
    p: float                # exact two-sided McNemar p-value
    images: int

    @property
    def resolved(self) -> bool:
        return self.p < LEVEL

    @property
    def first_better(self) -> bool:
        """The first is better and the test resolves it."""
        return self.resolved and self.first_only > self.second_only

    def words(self) -> str:
        return (f"on {self.images:,} validation images one was right where the other was wrong on "
                f"{self.first_only} and {self.second_only}, exact McNemar p = {self.p:.3g}")


def exact_mcnemar(first_only: int, second_only: int) -> float:
    """Two-sided exact p-value: twice the binomial(n, 1/2) tail at the smaller count, at most 1.
    Exact in integers, so 5,000 discordant images lose nothing to floating point."""
    n, k = first_only + second_only, min(first_only, second_only)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def compare(first: torch.Tensor, second: torch.Tensor) -> Paired:
    """Two models' right/wrong on the same images, in the same order."""
    if first.shape != second.shape:
        raise ValueError(f"paired right/wrong of different images: {tuple(first.shape)} and {tuple(second.shape)}")
    first, second = first.bool(), second.bool()
    a, b = int((first & ~second).sum()), int((second & ~first).sum())
    return Paired(a, b, exact_mcnemar(a, b), int(first.numel()))
