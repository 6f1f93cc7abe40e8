"""Repeatability of the CPU-time energy estimate: the same dense fine-tune, run several times at
1 and 2 torch threads, on digits and on a CIFAR-10 subset.

Each workload is pretrained once (a warmup checkpoint), then fine-tuned `--repeats` times per
thread count with `--meter estimate`, alternating thread counts so that a change in machine load
hits both alike. Printed per run: training joules (`energy_j` of summary.json's totals) and
evaluation joules (`eval_energy_j`), measured seconds (training + evaluation), busy cores
(joules / watts per core / wall seconds)
and the 1-minute load average before the run; per workload and thread count: the spread
((max - min) / median) of the training joules. The aim is a spread within 10% on a quiet machine; a
load average above the cores this machine has means other work competed and the figures say so.

    nice -n 10 python benchmarks/bench_estimate.py                      # digits + 1,000 CIFAR-10 images
    nice -n 10 python benchmarks/bench_estimate.py --only digits --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"
WATTS_PER_CORE = 10.0


def workloads(cifar_subset: int) -> dict[str, dict]:
    """Pretrain and fine-tune arguments of each workload (fine-tuning on the other shard)."""
    cifar = f"folder:{CIFAR}"
    return {
        "digits": {"pretrain": ["--dataset", "digits", "--shard", "0/2", "--epochs", "2", "--batch-size", "64"],
                   "finetune": ["--dataset", "digits", "--shard", "1/2", "--epochs", "15", "--batch-size", "64"]},
        "cifar-subset": {"pretrain": ["--dataset", cifar, "--subset", str(cifar_subset), "--shard", "0/2", "--epochs", "2",
                                     "--batch-size", "64"],
                         "finetune": ["--dataset", cifar, "--subset", str(cifar_subset), "--epochs", "2",
                                      "--batch-size", "64", "--shard", "1/2"]},
    }


# The same layout and evaluation batch every run: the automatic choice times candidates, and a
# different choice between runs would be different work.
FIXED = ["--memory-format", "contiguous", "--eval-batch-size", "256", "--quiet", "--overwrite"]


def edge_sel(args: list[str], env: dict) -> None:
    result = subprocess.run([sys.executable, "-m", "edge_sel", *args], env=env, capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        sys.exit(f"edge-sel {' '.join(args[:1])} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")


def finetune(name: str, spec: dict, checkpoint: Path, out: Path, threads: int, env: dict) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    edge_sel(["finetune", "--checkpoint", str(checkpoint), *spec["finetune"], *FIXED, "--out", str(out),
              "--meter", "estimate", "--watts-per-core", str(WATTS_PER_CORE), "--threads", str(threads)], env)
    command_s = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    totals = summary["totals"]
    assert totals["energy_method"] == "estimated", totals["energy_method"]
    wall = totals["train_wall_s"] + totals["eval_wall_s"]
    return {"workload": name, "threads": threads, "energy_j": totals["energy_j"],
            "eval_j": totals["eval_energy_j"] or 0.0,
            "window_s": wall, "command_s": command_s, "load_before": load,
            "flops_train": totals["flops_train"],
            "busy_cores": (totals["energy_j"] + (totals["eval_energy_j"] or 0.0)) / WATTS_PER_CORE / wall
            if wall else None}


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--cifar-subset", type=int, default=1000, help="CIFAR-10 training images")
    ap.add_argument("--only", choices=["digits", "cifar-subset"], default=None)
    ap.add_argument("--json", type=Path, default=None, help="Also write every run as JSON here.")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    env = dict(os.environ)
    env.setdefault("EDGE_SEL_CACHE", str(Path(tempfile.gettempdir()) / "edge-sel-bench-cache"))
    chosen = {k: v for k, v in workloads(args.cifar_subset).items() if args.only in (None, k)}
    print(f"machine: {os.cpu_count()} CPUs; estimate at {WATTS_PER_CORE:g} W per busy core; "
          f"1-minute load average now {os.getloadavg()[0]:.2f}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        for name, spec in chosen.items():
            warmup = Path(tmp) / f"{name}-warmup"
            edge_sel(["pretrain", *spec["pretrain"], *FIXED, "--out", str(warmup)], env)
            for repeat in range(args.repeats):
                order = threads if repeat % 2 == 0 else threads[::-1]
                for count in order:
                    run = finetune(name, spec, warmup, Path(tmp) / f"{name}-t{count}", count, env)
                    run["repeat"] = repeat
                    runs.append(run)
                    print(f"{name:13s} threads {count}  run {repeat}: training {run['energy_j']:8.1f} J, "
                          f"evaluation {run['eval_j']:7.1f} J  {run['window_s']:6.1f} s  "
                          f"{run['busy_cores']:.2f} busy cores  load before {run['load_before']:.2f}", flush=True)
    print("\nworkload       threads  runs   training J per run            spread (max-min)/median")
    for name in chosen:
        for count in threads:
            joules = [r["energy_j"] for r in runs if r["workload"] == name and r["threads"] == count]
            print(f"{name:13s}  {count:7d}  {len(joules):4d}   {', '.join(f'{j:.1f}' for j in joules):28s}  "
                  f"{spread(joules):6.1%}" + ("  (within 10%)" if spread(joules) <= 0.10 else "  (beyond 10%)"))
    loads = [r["load_before"] for r in runs]
    if max(loads) > (os.cpu_count() or 1):
        print(f"\nother work competed for the CPU: load averages {min(loads):.1f}-{max(loads):.1f} on "
              f"{os.cpu_count()} CPUs; these figures are not those of a quiet machine")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
