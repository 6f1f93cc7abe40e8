"""Buying evidence: what a search over candidates may spend, when it stops, and when its figures can
decide. Four places buy evidence, and each asks this module: the server's recipes (set_gains.py), the
device's trials (trial_gain.py), the default's choice and its race on the device (default_choice.py)
and the memory planner (joule_choice.py).

- **One budget and one stopping rule** (`Allowance`): a search spends at most its allowance of joules
  (read on the run's meter) or seconds, and stops at once where a stop signal came or the run's own
  energy budget would be passed. Whatever finished is kept and marked partial; nothing else is.
- **Successive halving** (`keep_leaders`): candidates train in rungs; after each rung only the leading
  third of each group goes on (Hyperband, ASHA), so a grid costs about 2.5 of its 6 recipes' trials.
- **Figures that can tell** (`as_good`, `resolved`): two candidates scored on the same held-out images
  are compared paired. One is "as good" as another only where a one-sided 95% paired test puts its
  deficit under NEAR_POINTS (never a point or more); one beats another only where the test resolves
  it. A decision the images cannot resolve is not made on them: the caller keeps its prior.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

# "As good": a deficit under half a point, resolved by the paired test (the planner's aim: half a
# point of the best). A point or more is never as good, whatever the images.
NEAR_POINTS = 0.005
NEVER_POINTS = 0.01
Z_ONE_SIDED = 1.645          # 95%, one-sided: "at most NEAR_POINTS behind"
Z_TWO_SIDED = 1.96           # 95%, two-sided: intervals shipped with a figure
KEEP_SHARE = 1 / 3           # of each group's candidates, the leading share that goes on at a rung


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """The mean difference of right (1) or wrong (0) of `a` over `b` on the same images, and its
    standard error."""
    diff = a.float() - b.float()
    n = len(diff)
    return float(diff.mean()), (float(diff.std()) / math.sqrt(n) if n > 1 else math.inf)


def deficit_bound(leader, other) -> float:
    """The one-sided 95% upper bound of `other`'s deficit behind `leader` (each with `gain` and, where
    scored on the same images, `correct`). Without paired images the figures are taken as they are."""
    gap = leader.gain - other.gain
    a, b = getattr(leader, "correct", None), getattr(other, "correct", None)
    if leader is other or a is None or b is None or len(a) != len(b) or len(a) < 2:
        return gap
    _, se = paired(a, b)
    return gap + Z_ONE_SIDED * se


def as_good(leader, other) -> bool:
    """Whether `other` may be taken for `leader` to spend fewer joules: its deficit is under
    NEAR_POINTS by the paired test, and under NEVER_POINTS as measured."""
    return leader.gain - other.gain < NEVER_POINTS and deficit_bound(leader, other) <= NEAR_POINTS


def resolved(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a`'s right-or-wrong on the same images beats `b`'s by a two-sided 95% paired test
    (the difference exceeds its noise); a tie, or a gap within the noise, is not resolved."""
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return False
    mean, se = paired(a, b)
    return mean > 0 and (se == 0 or mean > Z_TWO_SIDED * se)


def packed(right: torch.Tensor) -> str:
    """Per-image right/wrong as hex of packed bits, as a card ships it (500 images: 126 characters)."""
    return np.packbits(right.detach().cpu().bool().numpy()).tobytes().hex()


def unpacked(text: str, n: int) -> torch.Tensor:
    """`packed`'s right/wrong of `n` images back; ValueError where `text` is not hex."""
    return torch.from_numpy(np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool))


def interval(right: int, n: int) -> list[float]:
    """The 95% Wilson interval of an accuracy of `right` of `n` images, as shipped beside a figure."""
    if n <= 0:
        return [0.0, 1.0]
    p, z = right / n, Z_TWO_SIDED
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def interval_of_mean(values: torch.Tensor) -> list[float]:
    """The 95% normal interval of the mean of per-image figures (each image's share of trials right)."""
    n = len(values)
    if n < 2:
        return [0.0, 1.0]
    mean, half = float(values.float().mean()), Z_TWO_SIDED * float(values.float().std()) / math.sqrt(n)
    return [round(max(0.0, mean - half), 4), round(min(1.0, mean + half), 4)]


def keep_leaders(scores: dict, share: float = KEEP_SHARE) -> set:
    """Of `scores` ({key: (figure, tie-break)}), the keys of the leading share that goes on to the next rung,
    at least one (ties by the tie-break, larger first)."""
    ranked = sorted(scores, key=lambda c: scores[c], reverse=True)
    return set(ranked[:max(1, math.ceil(len(ranked) * share))])


class Stopped(Exception):
    """A phase stopped by its allowance, a stop signal or the run's budget (the reason is its text)."""


@dataclass
class Allowance:
    """What one search may spend: at most `joules` on `meter` and `seconds` of wall time (None: no
    limit of its own), never past the run's own energy or time budget (`budget`, engine/loop/budget.py),
    and nothing once `stop()` gives a reason (a stop signal). `spend_check(next_j, next_s)` before each
    piece of work says why it may not run."""
    joules: float | None = None
    seconds: float | None = None
    meter: object = None
    stop: Callable[[], str | None] = lambda: None
    budget: object = None
    started_j: float = 0.0
    started_s: float = field(default_factory=time.perf_counter)
    stopped: str | None = None

    @classmethod
    def of_run(cls, trainer, joules: float | None = None, seconds: float | None = None) -> "Allowance":
        """An allowance inside `trainer`'s run: its meter, its stop signals and its budget."""
        return cls(joules, seconds, trainer.meter, lambda: "a stop signal" if getattr(trainer, "stop_requested", False) else None,
                   getattr(trainer, "budget", None))

    def begin(self) -> "Allowance":
        self.started_j, self.started_s = self._meter_j(), time.perf_counter()
        return self

    def _meter_j(self) -> float:
        if self.meter is None:
            return 0.0
        sample_now = getattr(self.meter, "sample_once", None)
        if sample_now is not None:      # the sampler thread's total can lag by one interval
            sample_now(read_temperatures=False)
        return float(getattr(self.meter, "total_j", 0.0) or 0.0)

    def spent(self) -> tuple[float, float]:
        return self._meter_j() - self.started_j, time.perf_counter() - self.started_s

    def spend_check(self, next_j: float = 0.0, next_s: float = 0.0) -> str | None:
        """Why the next piece of work (`next_j` joules and `next_s` seconds expected) may not run, or
        None; a reason, once given, is kept in `stopped`."""
        if self.stopped:
            return self.stopped
        why = self.stop()
        if why is None:
            spent_j, spent_s = self.spent()
            budget = self.budget
            if self.joules is not None and spent_j + next_j > self.joules:
                why = f"its allowance of {self.joules:,.0f} J ({spent_j:,.0f} J spent)"
            elif self.seconds is not None and spent_s + next_s > self.seconds:
                why = f"its allowance of {self.seconds:,.0f} s ({spent_s:,.0f} s spent)"
            elif budget is not None and budget.limit_j is not None and \
                    budget.total_j(self.meter) + next_j > budget.limit_j:
                why = f"the run's --energy-budget of {budget.limit_j:,.0f} J"
            elif budget is not None and budget.limit_s is not None and budget.total_s() + next_s > budget.limit_s:
                why = f"the run's --time-budget of {budget.limit_s:,.0f} s"
        self.stopped = why
        return why

    def affords(self, more_j: float = 0.0, more_s: float = 0.0) -> bool:
        """Whether its own allowance has room for `more_j` joules and `more_s` seconds more (a stop or the
        run's budget is spend_check's to say)."""
        spent_j, spent_s = self.spent()
        return ((self.joules is None or spent_j + more_j <= self.joules)
                and (self.seconds is None or spent_s + more_s <= self.seconds))

    def limit_words(self) -> str:
        if self.joules is not None:
            return f"its allowance of {self.joules:,.0f} J"
        return "its allowance" if self.seconds is None else f"its allowance of {self.seconds:,.0f} s"

    def check(self, next_j: float = 0.0) -> None:
        """Raises Stopped where `spend_check` gives a reason."""
        why = self.spend_check(next_j)
        if why:
            raise Stopped(why)
