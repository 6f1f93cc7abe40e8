"""Threads and waiting for a CPU that other work shares (a camera pipeline, an inference service).

OpenMP's threads spin while they wait for work by default. On a machine of its own that shaves
microseconds off each parallel region; beside other busy processes the spinning threads take the
cores the other work needs, the work they wait for is descheduled, and a digits fine-tune here ran
7-70 times its quiet time while its CPU-time estimate grew with the contention. So:

- waiting is passive (`OMP_WAIT_POLICY=PASSIVE`) unless the user set the variable: set by the
  command line before torch is imported, since OpenMP reads it once, when it loads;
- the number of intra-op threads is what the CPU has free when the command starts: the CPUs this
  process may run on, less what other work keeps busy (the machine's CPU use over a quarter of a
  second while this process waits; the load average lags by a minute and counted a run that had
  just ended), at least one; `--threads` and a device profile's `cpu_threads` win.

What was chosen and why is stated in every run's config.json and summary.json (`threads`).
"""

from __future__ import annotations

import os

WAIT_ENV = "OMP_WAIT_POLICY"
_chosen: dict = {}


def passive_waiting(environ=None) -> str:
    """OMP_WAIT_POLICY=PASSIVE unless already set; returns the policy in force."""
    environ = os.environ if environ is None else environ
    environ.setdefault(WAIT_ENV, "PASSIVE")
    return environ[WAIT_ENV]


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):     # macOS has no affinity call
        return os.cpu_count() or 1


SAMPLE_S = 0.25


def other_load() -> float:
    """CPUs kept busy by other work now: the machine's busy share over SAMPLE_S seconds, in CPUs."""
    import psutil
    return psutil.cpu_percent(interval=SAMPLE_S) / 100 * (os.cpu_count() or 1)


def choose_threads(requested: int | None = None, cpus: int | None = None, load: float | None = None,
                   source: str = "--threads") -> tuple[int, str]:
    """(threads, why): `requested` when given, else the CPUs free of other work, at least one."""
    cpus = usable_cpus() if cpus is None else cpus
    if requested:
        return int(requested), f"{source} {requested}"
    load = other_load() if load is None else load
    free = max(1, min(cpus, int(cpus - load + 0.5)))
    return free, f"{cpus} CPUs, {load:.2f} busy with other work at the start: {free} free"


def apply_threads(requested: int | None = None, source: str = "--threads", **probe) -> dict:
    """Choose the threads (choose_threads), give them to torch, and remember what was chosen for
    the run's records; returns that record."""
    import torch
    count, why = choose_threads(requested, source=source, **probe)
    torch.set_num_threads(count)
    _chosen.clear()
    _chosen.update({"count": count, "why": why, "wait_policy": os.environ.get(WAIT_ENV, "(OpenMP's default)")})
    return dict(_chosen)


def describe() -> dict:
    """What this process chose (empty when it never chose: the Python API leaves torch's own)."""
    if _chosen:
        return dict(_chosen)
    torch = __import__("sys").modules.get("torch")
    return {"count": torch.get_num_threads() if torch else None, "why": "torch's default (not chosen here)",
            "wait_policy": os.environ.get(WAIT_ENV, "(OpenMP's default)")}
