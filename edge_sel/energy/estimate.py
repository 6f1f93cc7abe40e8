"""A labelled estimate for machines without any power sensor: this process's CPU time
multiplied by an assumed power per busy core. It is never reported as a measurement
(method `estimated`, source `estimate`), and it ignores GPUs, memory and idle power.
"""

from __future__ import annotations

import os
from typing import Callable

from .base import ESTIMATED, Component, Meter, Reading

# Mainstream desktop x86 parts draw roughly their package power divided by their core count
# per fully busy core, e.g. a 125 W, 8-core CPU under an all-core load: about 15 W per core.
# It is an upper-end figure for laptops (about 5-8 W per core) and ARM boards (1-3 W per
# core), so the estimate errs high there; device profiles override it via watts_per_core.
DEFAULT_WATTS_PER_CORE = 15.0


def process_cpu_seconds() -> float:
    """User + system CPU time of this process, its threads and its waited-for children
    (DataLoader workers), in seconds.

    The same kernel counters as psutil.Process().cpu_times(), read with one times(2) call:
    about 0.5 us instead of about 15-30 us, which matters at 10 samples a second."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class EstimateMeter(Meter):
    name = "estimate"
    covers = frozenset({"cpu"})

    def __init__(self, watts_per_core: float | None = None,
                 cpu_seconds: Callable[[], float] = process_cpu_seconds):
        super().__init__()
        self.watts_per_core = DEFAULT_WATTS_PER_CORE if watts_per_core is None else float(watts_per_core)
        if self.watts_per_core <= 0:
            raise ValueError(f"watts_per_core must be positive, got {watts_per_core}")
        self.cpu_seconds = cpu_seconds
        try:
            self.first_cpu_s = cpu_seconds()
        except OSError as e:
            self.unavailable = f"cannot read this process's CPU time: {e}"
            return
        self.components = [Component("cpu", ESTIMATED)]
        self.detail = f"process CPU time x {self.watts_per_core:g} W per busy core (no sensor)"

    def read(self) -> dict[str, Reading]:
        try:
            busy_s = self.cpu_seconds() - self.first_cpu_s
        except OSError as e:
            return {"cpu": Reading(error=f"process CPU time: {e}")}
        return {"cpu": Reading(energy_j=busy_s * self.watts_per_core)}
