"""`--energy-budget`: stop cleanly before the measured joules would pass the limit.

Checked before each step: the total so far, plus one more step at this epoch's mean cost, plus the
final evaluation (validation and test) the run still owes, must stay within the budget.
"""

from __future__ import annotations


class EnergyBudget:
    def __init__(self, limit_j: float | None):
        self.limit_j = limit_j
        self.offset_j = 0.0          # joules measured before a resume, and by steps a rollback threw away
        self.step_j = 0.0            # joules of one step so far (the previous epoch's before this one's first)
        self.eval_j = 0.0            # the final evaluation's expected joules
        self.eval_j_per_image = 0.0

    def total_j(self, meter) -> float:
        return meter.total_j + self.offset_j

    def exceeded_by_next_step(self, meter, start_j: float, steps_done: int) -> bool:
        if self.limit_j is None:
            return False
        sample_now = getattr(meter, "sample_once", None)
        if sample_now is not None:      # the sampler thread's total can lag by one interval (10 Hz)
            sample_now(read_temperatures=False)
        total = self.total_j(meter)
        if steps_done:
            self.step_j = (meter.total_j - start_j) / steps_done
        return total + self.step_j + self.eval_j > self.limit_j

    def reserve_evaluation(self, eval_energy_j: float | None, images_evaluated: int, final_images: int) -> None:
        """Reserve what the last epoch's evaluation will cost, at the dearest joules per image seen
        so far (small evaluations carry more overhead)."""
        if images_evaluated:
            self.eval_j_per_image = max(self.eval_j_per_image, (eval_energy_j or 0.0) / images_evaluated)
            self.eval_j = self.eval_j_per_image * final_images
