"""What a memory budget costs in time: a budgeted fine-tune (--sparsity budget plans what trains and
the step's shape), then the same trainable set without a budget, and with the budget under other glibc
allocator settings, each in a fresh process; wall, user and system seconds and minor page faults of the
child (getrusage), its planning time, its training time without planning, and its measured training
peak beside its count.

A budgeted CPU run sets glibc's allocator (engine/machine/peak_memory.py): blocks of 64 KiB and
more unmapped when freed while it plans, and while it trains too unless the count fits the budget
HEAP_SLACK times over (then the heap is kept). The command line asks for huge pages for torch's CPU
blocks of 2 MiB and more (edge_sel/huge_pages.py; THP_MEM_ALLOC_ENABLE=0 in the environment turns
that off for every row). The rows named "run" run as the command line does; every other setting
replaces the training one in the child: "glibc-run" (glibc's as a budgeted run sets it: the heap kept
where the count fits HEAP_SLACK times over, else 64K), "heap" (kept), "64K", "2M" (blocks of that size
and more mapped on their own and unmapped when freed), "glibc" (glibc's own dynamic threshold throughout).

    nice -n 5 python benchmarks/bench_budget_time.py --checkpoint CKPT --dataset folder:DIR --image-size 32 \\
        --subset 512 --budget 40       # what a budget costs, the planner choosing what trains
    nice -n 5 python benchmarks/bench_budget_time.py ... --budget 450   # the whole step, room for the heap
    python benchmarks/bench_budget_time.py ... --set bias+bn+classifier    # a fixed set, no planner row
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The child: an optional allocator setting in place of the run's own, and an optional trainable set
# (a JSON list of names) that --sparsity last-k trains instead of its last blocks.
CHILD = """
import json, os, sys
import edge_sel.engine.machine.peak_memory as pm
setting = sys.argv[1]
real = pm.allocator_for_training
if setting == "glibc":
    pm.allocator_for_budget = lambda: False
    pm.allocator_for_training = lambda keep_heap, pool=0: False
elif setting == "heap":
    pm.allocator_for_training = lambda keep_heap, pool=0: real(True)
elif setting != "run":
    pm.allocator_for_training = lambda keep_heap, pool=0: pm.set_mmap_threshold(int(setting))
names = os.environ.get("BENCH_TRAINABLE")
if names:
    from edge_sel.methods import UPDATERS
    from edge_sel.methods.update.fixed_sets import FixedSet
    chosen = set(json.loads(names))
    UPDATERS["last-k"] = lambda method: FixedSet("last-k", lambda model: chosen)
sys.argv = ["edge-sel", *sys.argv[2:]]
from edge_sel.cli import main
main()
"""


def run(setting: str, argv: list[str], trainable: list[str] | None = None) -> dict:
    env = dict(os.environ, **({"BENCH_TRAINABLE": json.dumps(trainable)} if trainable else {}))
    if setting != "run":
        setting = "run" if setting == "glibc-run" else setting
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, setting, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return {"wall_s": round(wall, 1), "user_s": round(after.ru_utime - before.ru_utime, 1),
            "sys_s": round(after.ru_stime - before.ru_stime, 1),
            "minor_faults": after.ru_minflt - before.ru_minflt}


def figures(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    memory = summary.get("memory") or {}
    plan = max((r.get("memory_plan_wall_s") or 0.0 for r in records), default=0.0)
    planned = next((r for r in records if r.get("memory_plan_wall_s")), {})
    totals = summary["totals"]
    # Planning's joules and the CPU-seconds of its measuring child and pool build it charges
    # (engine/loop/planning_cost.py): beside the child process tree's own user + sys seconds above.
    charged = {k: planned.get(k) for k in ("memory_plan_energy_j", "memory_plan_child_cpu_s", "memory_plan_pool_cpu_s")}
    return {"plan_wall_s": round(plan, 1), "train_wall_s": round(totals["train_wall_s"] - plan, 1), **charged,
            "energy_all_j": totals.get("energy_all_j"), "energy_method": totals.get("energy_method"),
            "measured_mb": memory.get("measured_mb"), "eval_measured_mb": memory.get("eval_measured_mb"),
            "counted_mb": memory.get("counted_mb"), "allocator": memory.get("allocator")}


def named_set(checkpoint: str, name: str) -> list[str]:
    """The tensors of the fixed set `name` (engine/loop/plan_sets.fixed_sets) on the checkpoint's model."""
    from edge_sel.engine.loop.plan_sets import fixed_sets
    from edge_sel.models import load_checkpoint
    model, _ = load_checkpoint(checkpoint)
    found = dict(fixed_sets(model, None)).get(name)
    if found is None:
        raise SystemExit(f"bench_budget_time: --set {name}: not a fixed set of plan_sets.fixed_sets without gains")
    return sorted(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--image-size", default=None)
    ap.add_argument("--subset", default="512")
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--budget", required=True, help="MiB: the budget --sparsity budget plans under")
    ap.add_argument("--set", default=None,
                    help="a fixed set of engine/loop/plan_sets.fixed_sets to time, instead of what "
                         "--sparsity budget chooses")
    ap.add_argument("--settings", default="glibc-run,heap",
                    help="other allocator settings for the budgeted run of the chosen set, on glibc (K/M suffixes, "
                         "'glibc-run', 'heap' or 'glibc')")
    args = ap.parse_args()
    common = ["finetune", "--checkpoint", args.checkpoint, "--dataset", args.dataset, "--subset", args.subset,
              "--test-subset", "64", "--val-subset", "64", "--batch-size", args.batch_size, "--epochs", args.epochs,
              "--threads", "1", "--memory-format", "contiguous", "--precision", "fp32",
              "--eval-batch-size", args.batch_size, "--quiet"]
    if args.image_size:
        common += ["--image-size", args.image_size]
    budget = ["--memory-budget", args.budget]
    with tempfile.TemporaryDirectory() as tmp:
        def row(name: str, setting: str, extra: list[str], trainable=None) -> Path:
            out = Path(tmp) / name.replace(" ", "-").replace(",", "")
            timing = run(setting, [*common, *extra, "--out", str(out)], trainable)
            print(json.dumps({"run": name, **timing, **figures(out)}), flush=True)
            return out

        if args.set:
            trainable = named_set(args.checkpoint, args.set)
        else:
            planned = row("budget (--sparsity budget)", "run", [*budget, "--sparsity", "budget"])
            trainable = json.loads((planned / "config.json").read_text())["memory_plan"]["trainable"]
        row("no budget, the same set", "run", ["--sparsity", "last-k"], trainable)
        same = row("budget, the same set", "run", [*budget, "--sparsity", "last-k"], trainable)
        plan = json.loads((same / "config.json").read_text())["memory_plan"]
        print(json.dumps({"trainable": len(trainable), "micro_batch": plan["micro_batch"],
                          "recompute": len(plan["recompute"]), "lean": plan.get("lean", False)}), flush=True)
        for setting in filter(None, args.settings.split(",")):
            scale = {"K": 1024, "M": 2 ** 20}
            named = setting in ("glibc", "heap", "glibc-run")
            value = setting if named else str(int(setting[:-1]) * scale[setting[-1]])
            row(f"budget, the same set, allocator {setting}", value, [*budget, "--sparsity", "last-k"], trainable)


if __name__ == "__main__":
    main()
