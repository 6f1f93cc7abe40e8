"""What a budgeted run's caches lack, measured by a short child process, so that the run plans once,
in its own process, reading (core/measuring.py says why the run itself may not measure).

The child gets the run's trainer as it was built (its options, model, data, source memory, the
checkpoint's set gains) and the growth the run measured before the first step; it plans as the run
would beside that growth, which counts and times the same steps, keeps them in the device's caches,
and stops before any trial or training step. The run charges the child's wall time and joules to its
planning (the meter's window holds the child: a device meter reads the whole board, the CPU-time
estimate counts a waited-for child's CPU time, all of it) and its counted FLOPs to its scoring passes.

The child runs nothing the user did not install: an isolated interpreter (`-I`: no current folder, no
user site, no PYTHON* variables on its path) in the run's private temporary folder, with only the folder
the running edge_sel was imported from added to its path where the interpreter would not find it there
(an editable install's source tree). A child that fails after it started stops the run in one line
(MeasuringFailed) rather than measuring here after something unexpected ran; a run that could not be
handed to one (its model's class does not pickle, or no isolated interpreter imports it: a model from a
file) measures here, and says so."""

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
from edge_sel.engine.loop.planning_cost import add_planning_cost, children_cpu_s
from edge_sel.errors import InputError, MeasuringFailed

CHILD_MODULE = "edge_sel.engine.runs.measuring_child"
HANDOFF_FAILED = 3      # the child's exit status where the spec named a module it cannot import: nothing ran
# What the isolated interpreter runs: the folder edge_sel came from first on its path unless it is there
# already, then that edge_sel checked to be the one imported, then the child's main.
BOOTSTRAP = (
    "import importlib, os, sys\n"
    "root, module = sys.argv[1], sys.argv[2]\n"
    "root in sys.path or sys.path.insert(0, root)\n"
    "import edge_sel\n"
    "found = os.path.dirname(os.path.dirname(os.path.abspath(edge_sel.__file__)))\n"
    "if found != root:\n"
    "    sys.exit(f'edge-sel: the measuring child imported edge_sel from {found}, not from {root}')\n"
    "sys.exit(importlib.import_module(module).main(*sys.argv[3:5]))\n")
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
    cost ({"wall_s", "energy_j", "cpu_s", "counts", "flops", "samples"}). Raises ChildFailed where the run
    could not be handed to it (then the run measures in its own process, and says so), MeasuringFailed
    where it started and failed."""
    with tempfile.TemporaryDirectory(prefix="edge-sel-measure-") as tmp:     # 0700: the spec is ours
        spec, result = Path(tmp) / "spec.pt", Path(tmp) / "result.json"
        try:
            torch.save(child_spec(trainer, spent_mb), spec)
        except Exception as e:          # a model or method that does not pickle (a lambda, a local class)
            raise ChildFailed(f"the run could not be handed to a child ({type(e).__name__}: {e})") from None
        trainer.meter.begin("memory-plan-child")
        t0, cpu0 = time.perf_counter(), children_cpu_s()
        try:
            done = subprocess.run(child_command(spec, result), cwd=tmp, env=child_environment(),
                                  capture_output=True, text=True)
        finally:
            wall, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
            energy = (trainer.meter.end("memory-plan-child") or {}).get("energy_j")
        last = " ".join((done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1].split())
        if done.returncode == HANDOFF_FAILED:
            raise ChildFailed(f"the run could not be handed to a child ({last})")
        try:
            found = json.loads(result.read_text()) if done.returncode == 0 else None
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict):
            raise MeasuringFailed(f"the measuring child failed ({last}); nothing was measured in this process: "
                                  f"run it again, or without --memory-budget")
    return {**found, "wall_s": round(wall, 3), "energy_j": energy, "cpu_s": round(cpu, 3)}


def package_root() -> str:
    """The folder the running edge_sel package was imported from (the one holding edge_sel/)."""
    return str(Path(__file__).resolve().parents[3])     # edge_sel/engine/loop/this file


def child_command(spec: Path, result: Path) -> list[str]:
    """An isolated interpreter (-I) running the child: nothing from the current folder, the user's site
    or PYTHON* variables; edge_sel from where this process imported it."""
    return [sys.executable, "-I", "-c", BOOTSTRAP, package_root(), CHILD_MODULE, str(spec), str(result)]


def child_environment() -> dict:
    """The run's environment (its EDGE_SEL_* settings, threads, cache) without what could put code on an
    interpreter's path (-I ignores PYTHON* variables; none is passed all the same)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


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
             "memory_plan_children": 1, "memory_plan_child_cpu_s": cost.get("cpu_s")}
    add_planning_cost(trainer, added)
    trainer.ledger.add_scoring(int(cost.get("samples", 0)), int(cost.get("flops", 0)))
