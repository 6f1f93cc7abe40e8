"""A run's limits: `--energy-budget` (the meter's joules) and `--time-budget` (wall seconds from the
run's start, planning, probes and evaluations included; a resumed run adds what its earlier part
recorded). The run stops cleanly before either would be passed.

Checked before each step: the total so far, plus one more step at this epoch's mean, plus the final
evaluation (validation and test) the run still owes, must stay within each limit given. Where both
would be passed, the one with the least room left (as a share of what the next step and the final
evaluation need) binds first and names the stop.
"""

from __future__ import annotations

import math
import time

ENERGY, TIME = "energy_budget", "time_budget"     # the stop reasons
STOPS = (ENERGY, TIME)
# A run's clock, unless a budget is given its own (a test's, so that no figure depends on the wall clock).
CLOCK = time.perf_counter


def _room(total: float, need: float, limit: float) -> float:
    """How many times `need` fits in what is left of `limit` (below 1: the limit would be passed)."""
    left = limit - total
    if need > 0:
        return left / need
    return math.inf if left >= 0 else -math.inf


class RunBudget:
    def __init__(self, limit_j: float | None = None, limit_s: float | None = None, clock=None):
        self.limit_j, self.limit_s, self.clock = limit_j, limit_s, clock or CLOCK
        self.started_s = self.clock()       # the run's start: built before its probes and plan
        self.offset_j = 0.0          # joules measured before a resume, and by steps a rollback threw away
        self.offset_s = 0.0          # seconds the run's earlier part recorded (a resume)
        self.step_j = self.step_s = 0.0     # one step so far (the previous epoch's before this one's first)
        self.eval_j = self.eval_s = 0.0     # the final evaluation's expected joules and seconds
        self.eval_j_per_image = self.eval_s_per_image = 0.0
        self.stopped: dict | None = None    # the limit that stopped the run, with its figures

    def total_j(self, meter) -> float:
        return meter.total_j + self.offset_j

    def total_s(self) -> float:
        return self.clock() - self.started_s + self.offset_s

    def passed_by_next_step(self, meter, start_j: float, start_s: float, steps_done: int) -> str | None:
        """The limit (ENERGY or TIME) one more step and the final evaluation would pass, or None.
        `start_j`, `start_s`: the meter and the clock at this epoch's start; `steps_done` since."""
        checked = {}
        if self.limit_j is not None:
            sample_now = getattr(meter, "sample_once", None)
            if sample_now is not None:      # the sampler thread's total can lag by one interval (10 Hz)
                sample_now(read_temperatures=False)
            if steps_done:
                self.step_j = (meter.total_j - start_j) / steps_done
            checked[ENERGY] = ("j", self.limit_j, self.total_j(meter), self.step_j, self.eval_j)
        if self.limit_s is not None:
            now = self.clock()
            if steps_done:
                self.step_s = (now - start_s) / steps_done
            checked[TIME] = ("s", self.limit_s, now - self.started_s + self.offset_s, self.step_s, self.eval_s)
        rooms = {name: _room(total, step + final, limit) for name, (_, limit, total, step, final) in checked.items()}
        binding = min(rooms, key=rooms.get, default=None)
        if binding is None or rooms[binding] >= 1:
            return None
        unit, limit, total, step, final = checked[binding]
        self.stopped = {"budget": binding, f"limit_{unit}": limit, f"spent_{unit}": total,
                        f"next_step_{unit}_estimated": step, f"final_evaluation_{unit}_estimated": final}
        return binding

    def reserve_evaluation(self, joules: float | None, seconds: float, images_evaluated: int,
                           final_images: int) -> None:
        """Reserve what the last epoch's evaluation will cost, at the dearest joules and seconds per
        image seen so far (small evaluations carry more overhead)."""
        if images_evaluated:
            self.eval_j_per_image = max(self.eval_j_per_image, (joules or 0.0) / images_evaluated)
            self.eval_s_per_image = max(self.eval_s_per_image, seconds / images_evaluated)
            self.eval_j = self.eval_j_per_image * final_images
            self.eval_s = self.eval_s_per_image * final_images
