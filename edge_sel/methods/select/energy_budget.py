"""The activation a gate aims for: a fixed share, or the share a joule budget per epoch affords.

With a budget the loop is closed on measurement: after each epoch, joules per trained sample =
energy_j / backward_samples of that epoch's record (fixed per-epoch costs included, so the fixed
point spends the budget), smoothed, and next epoch's target = budget / (J per sample x candidates).
Without an energy figure in the record (no meter wired or no sensor) the target stays put."""

from __future__ import annotations

import warnings

import torch


class ActivationTarget:
    def __init__(self, target: float, budget_j: float | None = None, floor: float = 0.01,
                 smoothing: float = 0.5):
        self.value = target
        self.budget_j = budget_j
        self.floor = floor
        self.smoothing = smoothing
        self.joules_per_sample: float | None = None
        self._warned = False

    def after_epoch(self, record: dict, candidates: int) -> dict:
        """Adapt to the epoch just measured; returns record fields that explain next epoch's target
        (the record's own `target_activation` is the one this epoch used)."""
        if self.budget_j is None:
            return {}
        energy, trained = record.get("energy_j"), record.get("backward_samples")
        if energy is None or not trained:
            if not self._warned:
                warnings.warn("--energy-budget-per-epoch: the records carry no energy_j, so the target "
                              f"activation stays at {self.value:.3f}", RuntimeWarning, stacklevel=2)
                self._warned = True
        else:
            measured = energy / trained
            j = self.joules_per_sample
            self.joules_per_sample = measured if j is None else self.smoothing * measured + (1 - self.smoothing) * j
            afford = self.budget_j / (self.joules_per_sample * max(candidates, 1))
            self.value = min(max(afford, self.floor), 1.0)
        return {"next_target_activation": self.value, "energy_budget_j": self.budget_j,
                "joules_per_sample": self.joules_per_sample}

    def state_dict(self) -> dict:
        j = self.joules_per_sample
        return {"value": torch.tensor(self.value, dtype=torch.float64),
                "joules_per_sample": torch.tensor(float("nan") if j is None else j, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        j = float(state["joules_per_sample"])
        self.joules_per_sample = None if j != j else j
