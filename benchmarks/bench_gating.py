"""Sample gating that saves real compute, measured side by side in one run.

Part A (compute): dense vs sundew at target activation A (default 0.3), same checkpoint, data, seed
and schedule. Per epoch: wall time of the whole training epoch (the strategy's plan() included: the
selection overhead is part of the cost) and counted training FLOPs; ratios against dense.

Part B (accuracy at equal data and epochs): dense, random@A (the control), sundew@A, dihcl and
infobatch, over K seeds: final test accuracy mean and std, samples trained, counted FLOPs, train
time, and the joules the records hold with their source.

To stay within minutes on a 2-core CPU, validation uses a 1,000-image stratified subset of the
validation split and the 10,000-image test set is evaluated after the last epoch only (neither is
used for any decision by these strategies).

    flock /tmp/edge-sel-cpu.lock python benchmarks/bench_gating.py --part all
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from edge_sel.config import TrainConfig
from edge_sel.data import Splits
from edge_sel.data.split import stratified_take
from edge_sel.engine.machine.device import seed_everything
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.energy.base import NullMeter
from edge_sel.methods import make_strategy, make_updater
from edge_sel.models import load_checkpoint

CIFAR = "folder:/work/shared/data/cifar10-jpeg"
CHECKPOINT = Path("/work/bench-ckpt/cifar-edgecnn-warmup")


def open_energy_meter():
    """The run's usual meter (a sensor, or the labelled estimate); none if the energy package is absent."""
    try:
        from edge_sel.engine.machine.energy_setup import EnergyOptions
        return EnergyOptions().validate().open()
    except Exception as e:  # the benchmark measures compute first; energy is reported if available
        print(f"(no energy meter: {e!r})", file=sys.stderr)
        return None


def load_splits(args) -> Splits:
    splits = DataOptions(args.dataset, shard=args.shard, subset=args.subset).load()
    val = splits.val.subset(stratified_take(splits.val, total=min(args.val, len(splits.val)), seed=5))
    return Splits(splits.train, val, splits.test)


def build_trainer(args, splits: Splits, strategy: str, method: dict, seed: int, epochs: int, meter):
    """A fine-tune exactly as `edge-sel finetune` sets it up, with plan() timed on the side."""
    model, card = load_checkpoint(args.checkpoint)
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device="cpu",
                      strategy=strategy, method=dict(method))
    generator = seed_everything(seed)
    strat = make_strategy(strategy, cfg.method)
    strat.plan_s = []
    plan = strat.plan

    def timed_plan(epoch):
        t0 = time.perf_counter()
        out = plan(epoch)
        strat.plan_s.append(time.perf_counter() - t0)
        return out
    strat.plan = timed_plan
    # The trainer validates every epoch and tests after the last one only.
    return Trainer(cfg, splits, model, card.mean, card.std, torch.device("cpu"), generator, strat,
                   make_updater("none", {}), meter=meter or NullMeter(), quiet=True)


def run_method(args, splits: Splits, strategy: str, method: dict, seed: int, epochs: int) -> dict:
    meter = open_energy_meter()
    try:
        trainer = build_trainer(args, splits, strategy, method, seed, epochs, meter)
        records = trainer.run()
    finally:
        if meter is not None:
            meter.close()
    return {"records": records, "plan_s": trainer.strategy.plan_s}


def run_interleaved(args, splits: Splits, runs: list[tuple[str, dict]], epochs: int) -> list[dict]:
    """Several fine-tunes advanced one epoch each in turn, so a change in machine load between
    them hits every run alike (the CPU is shared)."""
    meter = open_energy_meter()
    try:
        trainers = [build_trainer(args, splits, s, m, 0, epochs, meter) for s, m in runs]
        for epoch in range(epochs):
            for t in trainers:
                record = t.train_epoch(epoch)
                record.update(t.strategy.end_epoch(epoch, record))
                t.records.append(record)
    finally:
        if meter is not None:
            meter.close()
    return [{"records": t.records, "plan_s": t.strategy.plan_s} for t in trainers]


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def part_a(args, splits: Splits) -> dict:
    a = args.activation
    print(f"\n== Part A: compute at target activation {a} vs dense ({len(splits.train)} training images, "
          f"{args.epochs_a} epochs, seed 0, epochs interleaved) ==")
    dense, gated = run_interleaved(args, splits, [("dense", {}), ("sundew", {"target_activation": a})],
                                   args.epochs_a)
    print(f"{'epoch':>5} {'dense s':>8} {'sundew s':>9} {'plan() s':>9} {'time ratio':>10} "
          f"{'dense GFLOP':>11} {'sundew GFLOP':>12} {'FLOP ratio':>10} {'activation':>10}")
    rows = []
    for e, (d, g) in enumerate(zip(dense["records"], gated["records"])):
        tr, fr = g["wall_s"] / d["wall_s"], g["flops_train"] / d["flops_train"]
        rows.append((tr, fr))
        print(f"{e:>5} {d['wall_s']:>8.2f} {g['wall_s']:>9.2f} {gated['plan_s'][e]:>9.3f} {tr:>10.3f} "
              f"{d['flops_train'] / 1e9:>11.1f} {g['flops_train'] / 1e9:>12.1f} {fr:>10.3f} {g['activation']:>10.3f}")
    total_t = sum(g["wall_s"] for g in gated["records"]) / sum(d["wall_s"] for d in dense["records"])
    total_f = sum(g["flops_train"] for g in gated["records"]) / sum(d["flops_train"] for d in dense["records"])
    print(f"all epochs: time ratio {total_t:.3f}, FLOP ratio {total_f:.3f} (aims: <= 0.40 and <= 0.35); "
          f"scoring passes: {sum(g['scoring_samples'] for g in gated['records'])} samples")
    return {"time_ratio": total_t, "flop_ratio": total_f, "per_epoch": rows,
            "dense": dense["records"], "sundew": gated["records"]}


METHODS_B = [
    ("dense", "dense", {}),
    ("random@A", "random", {"target_activation": None}),
    ("sundew@A", "sundew", {"target_activation": None}),
    ("dihcl", "dihcl", {}),
    ("infobatch", "infobatch", {}),
]


def part_b(args, splits: Splits) -> dict:
    a = args.activation
    print(f"\n== Part B: accuracy at equal data and epochs ({len(splits.train)} training images, "
          f"{args.epochs_b} epochs, seeds {list(range(args.seeds))}, A = {a}) ==")
    results = {}
    for label, strategy, method in METHODS_B:
        method = {k: (a if v is None else v) for k, v in method.items()}
        runs = []
        for seed in range(args.seeds):
            recs = run_method(args, splits, strategy, method, seed, args.epochs_b)["records"]
            last = recs[-1]
            energy = [r.get("energy_j") for r in recs]
            runs.append({"test_acc": last["test_acc"], "samples": sum(r["backward_samples"] for r in recs),
                         "flops": sum(r["flops_train"] for r in recs), "wall": sum(r["wall_s"] for r in recs),
                         "energy_j": sum(energy) if None not in energy else None,
                         "energy_source": f"{last.get('energy_source')}/{last.get('energy_method')}"})
            print(f"  {label:10s} seed {seed}: test {last['test_acc']:.4f}, activation "
                  f"{[round(r['activation'], 3) for r in recs]}", flush=True)
        results[label] = runs
    dense_flops = statistics.mean(r["flops"] for r in results["dense"])
    print(f"\n{'method':10s} {'test acc mean':>13} {'std':>6} {'samples':>9} {'FLOPs/dense':>11} "
          f"{'train s':>8} {'energy J':>9}  source")
    for label, runs in results.items():
        accs = [r["test_acc"] for r in runs]
        energies = [r["energy_j"] for r in runs if r["energy_j"] is not None]
        print(f"{label:10s} {statistics.mean(accs):>13.4f} {statistics.pstdev(accs) if len(accs) > 1 else 0:>6.4f} "
              f"{statistics.mean(r['samples'] for r in runs):>9.0f} "
              f"{statistics.mean(r['flops'] for r in runs) / dense_flops:>11.3f} "
              f"{statistics.mean(r['wall'] for r in runs):>8.1f} "
              f"{fmt(statistics.mean(energies) if energies else None, '.1f'):>9}  {runs[0]['energy_source']}")
    mean = {k: statistics.mean(r["test_acc"] for r in v) for k, v in results.items()}
    print(f"sundew - dense: {100 * (mean['sundew@A'] - mean['dense']):+.2f} points; "
          f"sundew - random: {100 * (mean['sundew@A'] - mean['random@A']):+.2f} points")
    return {k: v for k, v in results.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["A", "B", "all"], default="all")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--dataset", default=CIFAR)
    p.add_argument("--shard", default="1/2")
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--val", type=int, default=1000, help="validation images evaluated per epoch")
    p.add_argument("--activation", type=float, default=0.3)
    p.add_argument("--epochs-a", type=int, default=3)
    p.add_argument("--epochs-b", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate (cosine); 0.05 is the CLI default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if not (args.checkpoint / "model.json").is_file():
        sys.exit(f"bench_gating: no checkpoint at {args.checkpoint} (model.json missing)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    splits = load_splits(args)
    print(f"data: {args.dataset} shard {args.shard} subset {args.subset}: {len(splits.train)} train, "
          f"{len(splits.val)} val (subset), {len(splits.test)} test; checkpoint {args.checkpoint}; "
          f"torch threads {torch.get_num_threads()}")
    out = {}
    if args.part in ("A", "all"):
        out["A"] = part_a(args, splits)
    if args.part in ("B", "all"):
        out["B"] = part_b(args, splits)
    print(f"\nbenchmark wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
