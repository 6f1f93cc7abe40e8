"""A budgeted run refused on a device's first start, started once more.

The first start on a device counts the plan's steps and times their costs, and keeps both for later
starts (engine/machine/count_store.py, probe_cache.py). Measuring grows the process: its timed
steps load kernels and caches for shapes the run never takes, and the counter's objects stay. A plan
that fits beside a start reading them can be refused beside one measuring them (Lite0 from ImageNet at
96 px under 1/10 of full FT's peak, the planner: 55.8 MiB named on a first start against a 49.6 MiB
budget; the same command again fitted, measured 38.8 MiB of training). Such a refusal is
RefusedAfterMeasuring where the run's cheapest step would fit beside no growth (else no start fits);
the command line starts the run once more in a fresh process (cli_start_again.py),
and that start counts the refused one's planning in its own (both ran).

A process started on mimalloc for its budget (edge_sel/allocator.py) pins more pages than glibc's heap
would, so its refusal of a budget that a start on glibc might hold (again: where the cheapest step fits
beside no growth) is RefusedOnMimalloc, and the run starts once more on glibc's allocator: at once where
this start kept nothing, after the start made again reading what it kept otherwise.

A plan that fits beside a measuring start's growth is not the plan later starts make, nor does it run
as theirs do. The plan made again beside what measuring grew the process by can take less than the plan
made before it (Lite0 at 96 px under 1/10, the planner's first run on a device: 18.3 MiB of growth
against the 13.4 of the runs reading its counts, and the classifier, 62.2% on the noisy test, where the
runs after it took the norms and the classifier, 71.6%). And measuring's caches, made for shapes the run
never takes, stay beside its steps (under 1/4, 40.0 MiB of growth against 18.5, and 124.4 MiB of
training measured against a 123.9 MiB budget). So where a start made again follows (the command line,
the benches), a start that measured while planning is refused the same way and made again, reading
what it measured; elsewhere, and in the start made again, its plan runs."""

from __future__ import annotations

import contextlib
import os

from edge_sel.engine.loop.first_use import GIVEN
from edge_sel.engine.machine import probe_cache
from edge_sel import allocator
from edge_sel.core.lean_saves import lean_words
from edge_sel.core.words import plural
from edge_sel.errors import (ON_GLIBC_AFTER_MIMALLOC, PLANNED_MEASURING, STARTED_AGAIN, InputError,
                              RefusedAfterMeasuring, RefusedOnMimalloc, parse_json)

PLAN_COST_KEYS = ("memory_plan_wall_s", "memory_plan_energy_j", "memory_plan_counts", "memory_plan_counts_read")
# Whether a refused start of this run is made again in a fresh process: set (fresh_start) by the command
# line's fine-tune and the benches' spawned runs where they will (cli.py, bench/bench_run.py).
fresh_start_follows = False


@contextlib.contextmanager
def fresh_start(follows: bool):
    """Within it, a start made again in a fresh process follows a refused start where `follows`."""
    global fresh_start_follows
    before, fresh_start_follows = fresh_start_follows, follows
    try:
        yield
    finally:
        fresh_start_follows = before


def plan_words(plan) -> str:
    """A memory plan's choice in words: what trains (--sparsity budget's candidate) and the step's shape."""
    chosen = (plan.gains or {}).get("chosen") or "the run's set"
    shape = [f"micro-batches of {plan.micro_batch}" if plan.micro_batch < plan.batch_size else "whole batches"]
    shape += [f"{plural(len(plan.recompute), 'block')} recomputed"] if plan.recompute else []
    shape += [lean_words(plan.lean)] if plan.lean else []
    statistics = "frozen" if plan.bn_statistics == "frozen" else "trained"
    return f"{chosen} in {', '.join(shape)}, BatchNorm statistics {statistics}"


def start_again_after_measuring(trainer, first, plan, measured: bool, grown: float) -> None:
    """RefusedAfterMeasuring where a fresh start follows and this start measured what the device's
    caches lacked while planning (`measured`), saying why: the plan made beside that measuring's growth
    (`plan`) differs from the one made before it (`first`), or the process grew by `grown` MiB (measured)
    before the first step, which measuring's caches keep beside the run's steps. Not where the growth is
    given (first_use.GIVEN): then no start's differs."""
    if not (measured and fresh_start_follows) or os.environ.get(GIVEN):
        return
    if plan_words(plan) != plan_words(first):
        why = (f"the plan narrowed: beside the {first.spent_mb:.1f} MiB the process had grown by before planning "
               f"measured, {plan_words(first)}; beside the {plan.spent_mb:.1f} MiB after it, {plan_words(plan)}")
    else:
        why = (f"the process grew {grown:.1f} MiB before the first step, {grown - first.spent_mb:.1f} of it while "
               f"planning, and would keep it beside the run's steps")
    cost = dict(getattr(trainer, "memory_plan_cost", None) or {})
    raise RefusedAfterMeasuring(f"--memory-budget {plan.budget_mb:g}: planned in a start that measured; {why}",
                                {**cost, PLANNED_MEASURING: why})


@contextlib.contextmanager
def refusal_after_measuring(trainer, fits_beside_no_growth):
    """A plan refused (InputError) where the run's cheapest step would fit beside no growth at all
    (`fits_beside_no_growth()`: else no start fits) becomes RefusedAfterMeasuring where this process kept
    counts or timings meanwhile (on mimalloc, only in a first start), else RefusedOnMimalloc where the
    process runs on the mimalloc started for its budget; either with planning's cost so far."""
    kept_before = probe_cache.kept_here
    try:
        yield
    except InputError as e:
        if type(e) is not InputError:
            raise
        measured = probe_cache.kept_here > kept_before
        on_mimalloc = allocator.runs_on_ours()
        again_on_mimalloc = on_mimalloc and (not measured or bool(getattr(trainer, "started_again_note", None)))
        if not (measured or on_mimalloc) or not fits_beside_no_growth():
            raise
        cost = dict(getattr(trainer, "memory_plan_cost", None) or {})
        raise (RefusedOnMimalloc if again_on_mimalloc else RefusedAfterMeasuring)(str(e), cost) from None


def take_earlier_start(trainer) -> None:
    """In a run started again, the refused start's planning cost (from the environment, taken once)
    becomes the start of this run's, and the plan will say so (`trainer.started_again_note`)."""
    earlier = os.environ.pop(STARTED_AGAIN, None)
    if earlier is None:
        return
    try:
        found = parse_json(earlier)
    except ValueError:
        found = {}
    cost = {k: v for k, v in (found if isinstance(found, dict) else {}).items()
            if k in PLAN_COST_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    trainer.memory_plan_cost = cost
    trainer.earlier_planning_s = float(cost.get("memory_plan_wall_s", 0.0))    # in the plan's estimate of the run
    if isinstance(found, dict) and found.get(ON_GLIBC_AFTER_MIMALLOC):
        trainer.started_again_note = (
            f"started again on glibc's allocator: the start on mimalloc, which pins more of the process, refused "
            f"the budget ({found[ON_GLIBC_AFTER_MIMALLOC]}); its {cost.get('memory_plan_wall_s', 0.0):.1f} s of "
            f"planning are in this run's totals")
        return
    if isinstance(found, dict) and isinstance(found.get(PLANNED_MEASURING), str):
        trainer.started_again_note = (
            f"started again: a first start measured what this device's caches lacked "
            f"({cost.get('memory_plan_counts', 0)} steps counted, or step costs timed); {found[PLANNED_MEASURING]}; "
            f"its {cost.get('memory_plan_wall_s', 0.0):.1f} s of planning are in this run's totals")
        return
    trainer.started_again_note = (
        f"started again: a first start measured what this device's caches lacked ({cost.get('memory_plan_counts', 0)} "
        f"steps counted, or step costs timed), which grew the process, and was refused; its "
        f"{cost.get('memory_plan_wall_s', 0.0):.1f} s of planning are in this run's totals")
