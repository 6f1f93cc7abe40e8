"""Compute spent but not yet written into a record.

Two kinds wait for the current epoch's record: scoring passes a strategy asked for, and steps a
rollback threw away (computed all the same, so their cost stays in the totals). A third kind is
what ran since the last checkpoint: a rollback moves it into the thrown-away sums.
"""

from __future__ import annotations

import time

ROLLED_BACK_ZERO = {"flops": 0, "samples": 0, "s": 0.0, "j": 0.0}


class ComputeLedger:
    def __init__(self):
        self.scoring = {"samples": 0, "flops": 0}
        self.rolled_back = dict(ROLLED_BACK_ZERO)
        self.checkpointed(0.0)

    def add_scoring(self, samples: int, flops: int) -> None:
        self.scoring["samples"] += samples
        self.scoring["flops"] += flops

    def add_step(self, samples: int, flops: int) -> None:
        self.uncommitted["samples"] += samples
        self.uncommitted["flops"] += flops

    def checkpointed(self, total_j: float) -> None:
        """A checkpoint was written (or restored): nothing since it is at risk yet."""
        self.uncommitted = {"flops": 0, "samples": 0}
        self.mark = (time.perf_counter(), total_j)

    def since_checkpoint(self, total_j: float) -> dict:
        """What a rollback to the last checkpoint would throw away (scoring passes not included)."""
        t0, j0 = self.mark
        return {"flops": self.uncommitted["flops"], "samples": self.uncommitted["samples"],
                "s": time.perf_counter() - t0, "j": total_j - j0}

    def take_scoring(self) -> dict:
        taken, self.scoring = self.scoring, {"samples": 0, "flops": 0}
        return taken

    def take_rolled_back(self) -> dict:
        taken, self.rolled_back = self.rolled_back, dict(ROLLED_BACK_ZERO)
        return taken
