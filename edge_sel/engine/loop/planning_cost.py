"""What a budgeted run's planning costs, in one sum (trainer.memory_plan_cost, the first epoch's record
and the run's totals, charged to --energy-budget and --time-budget): each plan made, each measuring child
(engine/loop/measure_child.py) and the CPU pool's build (engine/machine/cpu_pool.py), each timed and
metered in a window of its own, so the compiler's CPU time and a child's are the run's planning."""

from __future__ import annotations

import resource
import time

from edge_sel.engine.machine import cpu_pool


def add_planning_cost(trainer, added: dict) -> None:
    """`added`'s figures summed into the run's planning cost (a figure None on both sides stays None)."""
    before = getattr(trainer, "memory_plan_cost", None) or {}
    summed = {k: [v for v in (before.get(k), added.get(k)) if v is not None] for k in {**before, **added}}
    trainer.memory_plan_cost = {k: sum(v) if v else None for k, v in summed.items()}
    trainer.memory_plan_cost["memory_plan_wall_s"] = round(trainer.memory_plan_cost.get("memory_plan_wall_s") or 0.0, 3)


def started_planning(trainer, t0: float) -> None:
    """The run's planning (and the plan's estimate of the run) counts from `t0` unless it started earlier."""
    if getattr(trainer, "planning_started", None) is None:
        trainer.planning_started = t0


def pool_in_planning(trainer) -> None:
    """The CPU pool loaded, built first where this device has not built it (a C++ compiler's seconds,
    once): inside planning's time and a metered window of its own, whose estimate holds the compiler's
    CPU time. Nothing is charged where this process already loaded it."""
    if cpu_pool.library.cache_info().currsize:
        return
    t0, cpu0 = time.perf_counter(), children_cpu_s()
    started_planning(trainer, t0)
    trainer.meter.begin("memory-plan-pool")
    try:
        cpu_pool.library()
    finally:
        energy = (trainer.meter.end("memory-plan-pool") or {}).get("energy_j")
        wall = time.perf_counter() - t0
        add_planning_cost(trainer, {"memory_plan_wall_s": wall, "memory_plan_energy_j": energy,
                                    "memory_plan_pool_s": round(wall, 3),
                                    "memory_plan_pool_cpu_s": round(children_cpu_s() - cpu0, 3)})


def children_cpu_s() -> float:
    """CPU seconds (user and system) of this process's children that were waited for (a compiler, a
    measuring child), as the energy estimate charges them."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime
