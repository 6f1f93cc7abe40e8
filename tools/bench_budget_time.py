"""What a memory budget costs in time: the same fine-tune (the same trainable set, the same step shape)
without a budget and with one that fits its whole step, each in a fresh process, with glibc's mmap
threshold at several settings; wall, user and system seconds of the child (getrusage) and its
measured training peak.

A budgeted run tells glibc to map blocks of MMAP_THRESHOLD bytes and more on their own and unmap them
when freed (engine/machine/peak_memory.py return_freed_memory), so its resident size follows what
its steps keep; every step then maps its large tensors afresh, and the kernel zeroes and faults in
their pages: system time.

    nice -n 5 python tools/bench_budget_time.py --checkpoint CKPT --dataset folder:DIR --image-size 32 \\
        --subset 256 --budget 4000
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

CHILD = """
import sys
import edge_sel.engine.machine.peak_memory as pm
setting = sys.argv[1]
if setting == "default":
    import edge_sel.engine.loop.step_memory as sm
    sm.return_freed_memory = lambda: False
elif setting != "none":
    pm.MMAP_THRESHOLD = int(setting)
sys.argv = ["edge-sel", *sys.argv[2:]]
from edge_sel.cli import main
main()
"""


def run(setting: str, argv: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, setting, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return {"wall_s": round(wall, 1), "user_s": round(after.ru_utime - before.ru_utime, 1),
            "sys_s": round(after.ru_stime - before.ru_stime, 1),
            "minor_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--image-size", default=None)
    ap.add_argument("--subset", default="256")
    ap.add_argument("--batch-size", default="32")
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--budget", required=True, help="MiB: enough for the whole step (the same shape as unbudgeted)")
    ap.add_argument("--settings", default="64K,1M,32M,default",
                    help="mmap thresholds for the budgeted runs (K/M suffixes), or 'default' (glibc's own)")
    args = ap.parse_args()
    common = ["finetune", "--checkpoint", args.checkpoint, "--dataset", args.dataset, "--subset", args.subset,
              "--test-subset", "64", "--val-subset", "64", "--batch-size", args.batch_size, "--epochs", args.epochs,
              "--sparsity", "none", "--threads", "1", "--memory-format", "contiguous", "--precision", "fp32",
              "--eval-batch-size", args.batch_size, "--quiet"]
    if args.image_size:
        common += ["--image-size", args.image_size]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, setting, extra in [("no budget", "none", []),
                                     *[(f"budget, threshold {s}", s, ["--memory-budget", args.budget])
                                       for s in args.settings.split(",")]]:
            value = setting if setting in ("none", "default") else str(int(setting[:-1]) * {"K": 1024, "M": 2 ** 20}[setting[-1]])
            out = Path(tmp) / f"run{len(rows)}"
            figures = run(value, [*common, *extra, "--out", str(out)])
            summary = json.loads((out / "summary.json").read_text())
            memory = summary.get("memory") or {}
            rows.append({"run": name, **figures, "train_wall_s": round(summary["totals"]["train_wall_s"], 1),
                         "measured_mb": memory.get("measured_mb"), "counted_mb": memory.get("counted_mb")})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
