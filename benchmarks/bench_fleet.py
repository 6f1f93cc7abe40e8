"""Fleet benchmark: 4 simulated clients on non-iid (Dirichlet) CIFAR-10 shards fine-tune one warmup
for R rounds with FedAvg; dense local training against the Sundew gate and random gating at the
same activation. Per round: the global model's held-out accuracy and the fleet's joules (the sum of
the clients' meters; on a machine without power sensors, the labelled CPU-time estimate).

    python benchmarks/bench_fleet.py --out /tmp/bench-fleet        # then: edge-sel report /tmp/bench-fleet/*/ --out R

The warmup is `edge-sel pretrain --model edgecnn --dataset folder:CIFAR --shard 0/2 --epochs 8`;
the clients split a class-balanced subset of shard 1/2 (samples the warmup never saw).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CIFAR = "/work/shared/data/cifar10-jpeg"
METHODS = {
    "dense": [],
    "sundew": ["--strategy", "sundew", "--target-activation", "{a}"],
    "random": ["--strategy", "random", "--target-activation", "{a}"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="/work/ckpt/cifar-edgecnn")
    p.add_argument("--dataset", default=f"folder:{CIFAR}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--subset", type=int, default=8000, help="training samples of shard 1/2 split over the clients")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the client split")
    p.add_argument("--activation", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--eval-subset", type=int, default=0, help="held-out samples the server evaluates on (0: all)")
    p.add_argument("--val-subset", type=int, default=500)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--timeout", type=float, default=1800, help="per fleet run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.methods.split(","):
        run = args.out / name
        cmd = [sys.executable, "-m", "edge_sel", "fleet", "simulate", "--dataset", args.dataset,
               "--shard", "1/2", "--subset", str(args.subset), "--clients", str(args.clients),
               "--partition", "dirichlet", "--alpha", str(args.alpha), "--partition-seed", "0",
               "--checkpoint", args.checkpoint, "--rounds", str(args.rounds), "--local-epochs", "1",
               "--batch-size", "64", "--lr", str(args.lr), "--eval-subset", str(args.eval_subset),
               "--val-subset", str(args.val_subset), "--memory-format", "channels_last",
               "--eval-batch-size", "256", "--timeout", str(args.timeout), "--out", str(run), "--overwrite",
               *[a.format(a=args.activation) for a in METHODS[name]]]
        t0 = time.perf_counter()
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = markdown(args.out, args.methods.split(","))
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


def markdown(out: Path, methods: list[str]) -> str:
    runs = {m: [json.loads(line) for line in (out / m / "metrics.jsonl").read_text().splitlines()] for m in methods}
    rounds = sorted({r["round"] for rs in runs.values() for r in rs})
    head = "| round | " + " | ".join(f"{m} acc % | {m} fleet J" for m in methods) + " |"
    rows = [head, "|---:|" + "---:|---:|" * len(methods)]
    for k in rounds:
        cells = []
        for m in methods:
            r = next((r for r in runs[m] if r["round"] == k), {})
            acc = "-" if r.get("test_acc") is None else f"{100 * r['test_acc']:.2f}"
            joules = "-" if r.get("energy_j") is None else f"{r['energy_j']:.0f}"
            cells += [acc, joules]
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    totals = []
    for m in methods:
        trained = [r for r in runs[m] if r["round"] > 0]
        totals += [f"act {sum(r['backward_samples'] for r in trained) / max(1, sum(r['samples_available'] for r in trained)):.2f}",
                   f"{sum(r['energy_j'] for r in trained):.0f}"]
    rows.append("| total | " + " | ".join(totals) + " |")
    kinds = sorted({r.get("energy_method") for rs in runs.values() for r in rs if r["round"] > 0})
    return "\n".join(rows) + f"\n\nFleet joules: sum of the clients' meters, energy_method {', '.join(kinds)}.\n"


if __name__ == "__main__":
    sys.exit(main())
