"""Same accuracy in the default precision as in fp32: paired seeds, paired differences, 95% intervals.

For each seed, two pretrains of edgecnn from scratch (`--precision fp32` and the candidate: the
default `--precision auto`, or `bf16` with --candidate bf16; everything else equal: data, split,
seed, layout, evaluation batch), then two fine-tunes from the seed's fp32 warmup on the other half
of the data, again fp32 and the candidate. Every
run's final test accuracy is read back; the script prints each pair, the mean paired difference
(candidate - fp32) with its 95% t-interval, and what precision each run ran in (from summary.json).
A difference whose interval contains 0 and stays within noise is "within noise".

    python benchmarks/precision_equivalence.py --out /tmp/prec          # 5 seeds, 8 + 3 epochs, CIFAR-10 shards
    python benchmarks/precision_equivalence.py --out /tmp/prec --seeds 3 --subset 4000 --pretrain-epochs 4

Runs are sequential with the machine's threads; on a shared machine they take long, not differently.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
# Two-sided 95% Student t quantiles by degrees of freedom (n - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    return T95.get(df) or T95[max(k for k in T95 if k <= df)]


def edge_sel(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "edge_sel", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"edge-sel {' '.join(map(str, args[:1]))} failed:\n{done.stderr[-2000:]}")


def final(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    p = summary.get("precision") or {}
    return {"test_acc": records[-1]["test_acc"], "precision": f"{p.get('train')}/{p.get('eval')} ({p.get('source')})",
            "train_s": sum(r.get("wall_s") or 0 for r in records)}


def paired(rows: list[dict], what: str, candidate: str) -> str:
    diffs = [r[what][candidate]["test_acc"] - r[what]["fp32"]["test_acc"] for r in rows]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{what}: {candidate} - fp32 = {100 * mean:+.2f} points (1 seed: no interval)"
    half = t95(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return (f"{what}: {candidate} - fp32 = {100 * mean:+.2f} points, 95% interval [{100 * (mean - half):+.2f}, "
            f"{100 * (mean + half):+.2f}] over {len(diffs)} paired seeds")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dataset", default=f"folder:{CIFAR}" if (CIFAR / "train").is_dir() else "synthetic")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=None, help="Class-balanced N training samples per shard run.")
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--candidate", choices=("auto", "bf16"), default="auto",
                    help="What is compared with fp32: the default (auto, whatever it picks here) or bf16 forced.")
    args = ap.parse_args()
    arms = ("fp32", args.candidate)
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", args.dataset, "--batch-size", args.batch_size, "--quiet", "--overwrite",
              # the layout and evaluation batch fixed, so precision is the only difference between arms
              "--memory-format", "channels_last", "--eval-batch-size", "256", "--meter", "estimate"]
    if args.subset:
        common += ["--subset", args.subset]
    rows = []
    results_file = args.out / "results.json"
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row: dict = {"seed": seed, "pretrain": {}, "finetune": {}}
        t0 = time.perf_counter()
        for arm in arms:
            run = args.out / f"seed{seed}" / f"pretrain-{arm}"
            edge_sel("pretrain", "--model", "edgecnn", *common, "--shard", "0/2", "--seed", seed,
                     "--epochs", args.pretrain_epochs, "--precision", arm, "--out", run)
            row["pretrain"][arm] = final(run)
        if not args.skip_finetune:
            warm = args.out / f"seed{seed}" / "pretrain-fp32"
            for arm in arms:
                run = args.out / f"seed{seed}" / f"finetune-{arm}"
                edge_sel("finetune", "--checkpoint", warm, *common, "--shard", "1/2", "--seed", seed,
                         "--epochs", args.finetune_epochs, "--keep", "last", "--precision", arm, "--out", run)
                row["finetune"][arm] = final(run)
        rows.append(row)
        results_file.write_text(json.dumps(rows, indent=2))
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s): " + "; ".join(
            f"{what} " + ", ".join(f"{arm} {row[what][arm]['test_acc']:.4f} [{row[what][arm]['precision']}]"
                                   for arm in arms) for what in ("pretrain", "finetune") if row[what]), flush=True)
    for what in ("pretrain", "finetune"):
        if all(r[what] for r in rows):
            print(paired(rows, what, args.candidate))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (results: {results_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
