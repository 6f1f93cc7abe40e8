"""What a budgeted run's caches lack, measured by a short child process, so that the run plans once,
in its own process, reading (core/measuring.py says why the run itself may not measure).

The child gets the run's trainer as it was built (its options, model, data, source memory, the
checkpoint's set gains) and the growth the run measured before the first step; it plans as the run
would beside that growth, which counts and times the same steps, keeps them in the device's caches,
and stops before any trial or training step. The run charges the child's wall time and joules to its
planning (the meter's window holds the child: a device meter reads the whole board, the CPU-time
estimate counts a waited-for child's CPU time) and its counted FLOPs to its scoring passes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from edge_sel.core import measuring
from edge_sel.engine.loop.first_use import GIVEN
from edge_sel.errors import InputError

CHILD_MODULE = "edge_sel.engine.runs.measuring_child"
CHILD_ROUNDS = 3        # measuring children a plan may need before it measures in its own process
# The run's fields the child does without (it writes nothing, meters nothing, waits for no heat) or
# makes anew from the run's options (a strategy and an updater, as the run made them: they hold functions).
DROPPED = ("meter", "guard", "state_dir", "records", "ranks", "baseline", "strategy", "updater")


def child_spec(trainer, spent_mb: float) -> dict:
    fields = {f.name: getattr(trainer, f.name) for f in dataclasses.fields(trainer) if f.name not in DROPPED}
    fields["quiet"] = True
    return {"trainer": fields, "spent_mb": spent_mb, "threads": torch.get_num_threads()}


def measure_in_child(trainer, spent_mb: float) -> dict:
    """Runs the measuring child for `trainer` beside `spent_mb` MiB of the run's growth; returns what it
    cost ({"wall_s", "energy_j", "counts", "timed", "flops", "samples"}). Raises ChildFailed where it
    could not run or did not finish (then the run measures in its own process, and says so)."""
    with tempfile.TemporaryDirectory(prefix="edge-sel-measure-") as tmp:     # 0700: the spec is ours
        spec, result = Path(tmp) / "spec.pt", Path(tmp) / "result.json"
        try:
            torch.save(child_spec(trainer, spent_mb), spec)
        except Exception as e:          # a model or method that does not pickle (a lambda, a local class)
            raise ChildFailed(f"the run could not be handed to a child ({type(e).__name__}: {e})") from None
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        trainer.meter.begin("memory-plan-child")
        t0 = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", CHILD_MODULE, str(spec), str(result)], env=env,
                                  capture_output=True, text=True)
        finally:
            wall = time.perf_counter() - t0
            energy = (trainer.meter.end("memory-plan-child") or {}).get("energy_j")
        if done.returncode != 0 or not result.is_file():
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ChildFailed(f"the measuring child failed: {last}")
        found = json.loads(result.read_text())
    return {**found, "wall_s": round(wall, 3), "energy_j": energy}


class ChildFailed(Exception):
    pass


def plan_reading(trainer, plan_afresh):
    """The plan `plan_afresh()` makes, reading the device's caches: what they lack is measured first by
    a short child process beside this run's growth, at most CHILD_ROUNDS times (a plan made again
    beside planning's own growth can need a shape the child did not take); then, or where no child can
    run, measured here, and the plan says so. In the child itself: measured, then stopped."""
    if measuring.in_child():
        with contextlib.suppress(InputError):       # a refusal is the run's to say: what was measured is kept
            plan_afresh()
        raise measuring.MeasuredOnly(trainer)
    if os.environ.get(GIVEN):       # a growth given, not measured: no plan depends on what measuring grew
        return plan_afresh()
    why = f"still lacking after {CHILD_ROUNDS} children"
    for _ in range(CHILD_ROUNDS):
        try:
            with measuring.forbidden():
                return plan_afresh()
        except measuring.Unmeasured:
            try:
                charge_child(trainer, measure_in_child(trainer, getattr(trainer, "memory_spent_mb", 0.0)))
                trainer.memory_counter.store.forget()       # what the child kept is read from here on
            except ChildFailed as e:
                why = str(e)
                break
    plan = plan_afresh()
    plan.notes.append(f"counts and step costs this device's caches lacked were measured in this process ({why}): "
                      f"the growth they leave is beside the run's steps")
    return plan


def charge_child(trainer, cost: dict) -> None:
    """The measuring child's time and joules are planning's; its counted passes (the gain probe's)
    are the run's scoring."""
    added = {"memory_plan_wall_s": cost["wall_s"], "memory_plan_energy_j": cost.get("energy_j"),
             "memory_plan_child_counts": cost.get("counts", 0), "memory_plan_child_s": cost["wall_s"],
             "memory_plan_children": 1}
    before = getattr(trainer, "memory_plan_cost", None) or {}
    summed = {k: [v for v in (before.get(k), added.get(k)) if v is not None] for k in {**before, **added}}
    trainer.memory_plan_cost = {k: sum(v) if v else None for k, v in summed.items()}
    trainer.ledger.add_scoring(int(cost.get("samples", 0)), int(cost.get("flops", 0)))
