"""Pretraining wall time: one process against N ranks under torchrun (DDP), on the same data.

Each round runs every setup, alternating the order, so that a change in machine load hits all
alike. Setups: one process with torch's default thread count (every core), one process with one
thread (OMP_NUM_THREADS=1, as each torchrun rank on a CPU gets), and N ranks of one thread each. Reported per setup: the command's whole wall
time (interpreter start, imports, data loading and rendezvous included), the training time the
records sum (`train_wall_s`, epochs only), training samples per second, counted training FLOPs and
the energy figure with its method.

    flock /tmp/edge-sel-cpu.lock python benchmarks/bench_ddp.py                       # CIFAR-10 subset
    flock /tmp/edge-sel-cpu.lock python benchmarks/bench_ddp.py --dataset digits --subset 0
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


def run(cmd: list[str], out: Path, env: dict, threads: str | None = None) -> dict:
    env = {**env, "OMP_NUM_THREADS": threads} if threads else env
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    t = summary["totals"]
    return {"command_s": wall, "train_s": t["train_wall_s"], "samples": t["samples_trained"],
            "flops": t["flops_train"], "energy_j": t["energy_j"], "energy_method": t["energy_method"],
            "test_acc": summary["final"]["test_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=f"folder:{CIFAR}")
    ap.add_argument("--subset", type=int, default=5000, help="training samples (0: all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="per process (DDP: per rank)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env.setdefault("EDGE_SEL_CACHE", str(Path(tempfile.gettempdir()) / "edge-sel-bench-cache"))
    common = ["pretrain", "--dataset", args.dataset, "--epochs", str(args.epochs), "--batch-size",
              str(args.batch_size), "--memory-format", "channels_last", "--eval-batch-size", "256", "--quiet",
              "--overwrite", *(["--subset", str(args.subset)] if args.subset else [])]
    single = lambda out: [sys.executable, "-m", "edge_sel", *common, "--out", str(out)]   # noqa: E731
    setups = {
        "1 process": (single, None),
        "1 proc 1 thread": (single, "1"),
        f"{args.ranks} ranks": (lambda out: [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc-per-node", str(args.ranks), "-m", "edge_sel", *common,
                                            "--out", str(out)], None),
    }
    results: dict[str, list[dict]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed warm-up: decodes the image cache once, so no timed run pays for it.
        run(single(Path(tmp) / "warm") + ["--epochs", "1"], Path(tmp) / "warm", env)
        for r in range(args.rounds):
            order = list(setups) if r % 2 == 0 else list(reversed(setups))
            for name in order:
                out = Path(tmp) / name.replace(" ", "_")
                build, threads = setups[name]
                results[name].append(run(build(out), out, env, threads))
                print(f"round {r}: {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    print(f"{args.dataset}, {args.subset or 'all'} samples, {args.epochs} epochs, batch {args.batch_size} per "
          f"process, {os.cpu_count()} CPUs, {args.rounds} rounds, medians")
    print(f"{'setup':>15}  {'command s':>9}  {'train s':>8}  {'samples/s':>9}  {'GFLOP':>7}  {'energy J':>9}  "
          f"{'test acc':>8}")
    for name, rs in results.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("command_s", "train_s", "flops", "test_acc")}
        energy = statistics.median(x["energy_j"] for x in rs)
        print(f"{name:>15}  {med['command_s']:9.1f}  {med['train_s']:8.1f}  {rs[0]['samples'] / med['train_s']:9.0f}  "
              f"{med['flops'] / 1e9:7.1f}  {energy:9.1f}  {med['test_acc']:8.3f}  ({rs[0]['energy_method']})")


if __name__ == "__main__":
    main()
