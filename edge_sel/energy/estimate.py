"""A labelled estimate for machines without any power sensor: busy CPU time multiplied by an
assumed power per busy core. It is never reported as a measurement (method `estimated`, source
`estimate`), and it ignores GPUs, memory and idle power.

Two scopes: a run charges this process's CPU time (its threads, including threads that spin
while they wait for work, which do draw power) and its children's (a measuring child, a compiler:
their CPU time is the run's); `edge-sel monitor` charges the whole machine's busy time, since the
monitor itself is idle. This process's own time is charged at most cores x watts per core an
interval: read at a coarse resolution, or charged late, it must not make an impossible power. A
child's is charged whole: it arrives in one sample when the child is waited for, after the child
ran for seconds beside this process (a 3.7 s child's 3.5 CPU-s had been cut to what one short
sample allows, 3.19 J of about 50).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from ..core.words import plural
from .base import ESTIMATED, Component, Meter, Reading

# Mainstream desktop x86 parts draw roughly their package power divided by their core count
# per fully busy core, e.g. a 125 W, 8-core CPU under an all-core load: about 15 W per core.
# It is an upper-end figure for laptops (about 5-8 W per core) and ARM boards (1-3 W per
# core), so the estimate errs high there; device profiles override it via watts_per_core.
DEFAULT_WATTS_PER_CORE = 15.0

PROCESS, MACHINE = "process", "machine"


def process_cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads, in seconds. The process clock has
    nanosecond resolution (os.times counts 10 ms ticks, too coarse for windows of a few
    milliseconds); it costs about 1 us."""
    return time.process_time()


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's children that were waited for (a measuring child, a
    compiler, DataLoader workers), in seconds."""
    times = os.times()
    return times.children_user + times.children_system


def machine_cpu_seconds() -> float:
    """Busy (not idle, not waiting for I/O) CPU time of every process on the machine, summed over
    its CPUs, in seconds."""
    import psutil
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):    # macOS has no affinity call
        return os.cpu_count() or 1


def process_cores() -> int:
    """Cores this process can keep busy: its torch threads (ORT uses as many), at most the CPUs
    it may run on. torch is looked up, not imported: the estimate must not pay its import."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else usable_cpus()
    return max(1, min(threads, usable_cpus()))


def machine_cores() -> int:
    return os.cpu_count() or 1


class EstimateMeter(Meter):
    name = "estimate"
    covers = frozenset({"cpu"})

    def __init__(self, watts_per_core: float | None = None,
                 cpu_seconds: Callable[[], float] | None = None,
                 cores: Callable[[], int] | None = None, scope: str = PROCESS,
                 clock: Callable[[], float] = time.monotonic,
                 children_seconds: Callable[[], float] | None = None):
        super().__init__()
        if scope not in (PROCESS, MACHINE):
            raise ValueError(f"scope must be {PROCESS!r} or {MACHINE!r}, got {scope!r}")
        self.watts_per_core = DEFAULT_WATTS_PER_CORE if watts_per_core is None else float(watts_per_core)
        if self.watts_per_core <= 0:
            raise ValueError(f"watts_per_core must be positive, got {watts_per_core}")
        self.scope = scope
        self.cpu_seconds = cpu_seconds or (process_cpu_seconds if scope == PROCESS else machine_cpu_seconds)
        self.cores = cores or (process_cores if scope == PROCESS else machine_cores)
        # A run's children, uncapped (the machine's busy time holds them already; a given clock is whole).
        self.children_seconds = children_seconds or (
            children_cpu_seconds if scope == PROCESS and cpu_seconds is None else lambda: 0.0)
        self.clock = clock
        self.energy_j = 0.0
        try:
            self.last_cpu_s, self.last_t = self.cpu_seconds(), clock()
            self.last_children_s = self.children_seconds()
        except OSError as e:
            self.unavailable = f"cannot read CPU time: {e}"
            return
        self.components = [Component("cpu", ESTIMATED)]
        if scope == PROCESS:
            self.detail = (f"this process's CPU time (spin-waiting threads included) and its waited-for "
                           f"children's x {self.watts_per_core:g} W per busy core, this process at most "
                           f"{plural(self.cores(), 'core')} (no sensor)")
        else:
            self.detail = (f"the whole machine's busy CPU time (every process) x {self.watts_per_core:g} W "
                           f"per busy core, at most {plural(self.cores(), 'core')} (no sensor)")

    def read(self) -> dict[str, Reading]:
        try:
            cpu_s, children_s, t = self.cpu_seconds(), self.children_seconds(), self.clock()
        except OSError as e:
            return {"cpu": Reading(error=f"CPU time: {e}")}
        wall_s = max(t - self.last_t, 0.0)
        own_s = min(max(cpu_s - self.last_cpu_s, 0.0), wall_s * self.cores())
        busy_s = own_s + max(children_s - self.last_children_s, 0.0)
        self.last_cpu_s, self.last_children_s, self.last_t = cpu_s, children_s, t
        self.energy_j += busy_s * self.watts_per_core
        # The power a sample shows is this process's: a child's seconds, reaped at once, are no power of that sample.
        power = own_s * self.watts_per_core / wall_s if wall_s > 0 else None
        return {"cpu": Reading(energy_j=self.energy_j, power_w=power)}
