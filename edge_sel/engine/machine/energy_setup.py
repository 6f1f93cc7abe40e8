"""How a run measures energy: which meters, an idle baseline, a budget and a thermal limit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edge_sel.config import GUARD_TEMP_C
from edge_sel.errors import InputError


@dataclass
class EnergyOptions:
    meters: list[str] = field(default_factory=list)   # empty: automatic choice
    watts_per_core: float | None = None               # for the estimate
    rails: list[str] | None = None                    # Jetson rails that make the module total
    interval_s: float = 0.1
    idle_baseline_s: float = 0.0
    budget_j: float | None = None                     # stop cleanly before the total passes this
    max_temp_c: float | None = None                   # thermal guard
    hysteresis_c: float = 5.0
    max_pause_s: float = 600.0                        # longest single thermal pause (a stuck sensor)

    def validate(self) -> "EnergyOptions":
        for option, value in (("--idle-baseline", self.idle_baseline_s), ("--energy-budget", self.budget_j),
                              ("--max-pause", self.max_pause_s), ("--max-temp", self.max_temp_c),
                              ("--watts-per-core", self.watts_per_core), ("thermal hysteresis", self.hysteresis_c)):
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and math.isfinite(value)):       # NaN passes every comparison below
                raise InputError(f"{option} must be a finite number, got {value!r}")
        if self.idle_baseline_s < 0:
            raise InputError(f"--idle-baseline must be >= 0 seconds, got {self.idle_baseline_s}")
        if self.budget_j is not None and self.budget_j <= 0:
            raise InputError(f"--energy-budget must be > 0 joules, got {self.budget_j}")
        if not self.max_pause_s > 0:
            raise InputError(f"--max-pause must be > 0 seconds, got {self.max_pause_s}")
        low, high = GUARD_TEMP_C
        if self.max_temp_c is not None and not low <= self.max_temp_c <= high:
            raise InputError(f"--max-temp must be between {low:g} and {high:g} C, got {self.max_temp_c}")
        if self.watts_per_core is not None and not self.watts_per_core > 0:
            raise InputError(f"--watts-per-core must be > 0, got {self.watts_per_core}")
        if self.hysteresis_c < 0:
            raise InputError(f"thermal hysteresis must be >= 0, got {self.hysteresis_c}")
        return self

    def open(self, gpu_uuids: list[str] | None = None):
        """Start the meter (one sampler thread) and, if asked, measure idle power first.
        `gpu_uuids`: the GPUs the run trains on (NVML then meters those only)."""
        from edge_sel.energy import open_meter
        meter = open_meter(self.meters or None, watts_per_core=self.watts_per_core, rails=self.rails,
                           interval_s=self.interval_s, gpu_uuids=gpu_uuids)
        meter.start()
        if self.idle_baseline_s > 0:
            meter.idle_baseline(self.idle_baseline_s)
        return meter

    def to_json(self) -> dict:
        return dict(vars(self))
