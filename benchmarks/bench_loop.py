"""edge-sel's loop against a plain hand-written PyTorch loop, and each speed option, side by side.

Three parts, each in one run with rounds interleaved (every contender once per round, in turn) so
background load hits all of them alike; medians are printed with ratios.

A. Dense training throughput (samples/s, evaluation excluded): the plain loop a PyTorch user would
   write (--model, edgecnn by default; SGD Nesterov, same augmentation ops) in fp32 and with bf16 autocast, edge-sel as
   it ran before the layout choice (contiguous, fp32), before the precision choice (measured
   layout, fp32), edge-sel's default (layout and precision measured on this device), bf16 forced,
   channels_last forced and --compile.
B. Evaluation throughput (images/s over the test set): the previous default (contiguous, batch
   1000, fp32) against the measured layout and batch size in fp32, in the precision the default
   chose for evaluation, and in bf16.
C. A gated epoch (sundew, activation 0.3) including its evaluation: the previous default (validation
   and the whole test set every epoch, contiguous, batch 1000, fp32) against the new one (validation
   only, test after the last epoch, measured layout, batch and precision).

    python benchmarks/bench_loop.py                     # CIFAR-10 JPEG folders when present, else synthetic
    python benchmarks/bench_loop.py --rounds 5 --parts A
    python benchmarks/bench_loop.py --parts A --arms "plain loop,edge-sel fp32,edge-sel default"
    python benchmarks/bench_loop.py --parts A --model efficientnet_lite0 --image-size 128 --subset 500 \
        --batch-size 32 --rounds 3 --arms "edge-sel fp32,plain loop bf16,edge-sel bf16"
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from edge_sel.bench import contention
from edge_sel.config import TrainConfig
from edge_sel.data import load_source, make_splits
from edge_sel.data.augment import augment_batch, normalize
from edge_sel.device_caps import native_bf16
from edge_sel.engine.machine.device import seed_everything
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.evaluation.evaluate import predict_dataset
from edge_sel.engine.machine.precision import autocast
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.methods import Strategy, Updater, make_strategy
from edge_sel.models import build_model

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
BEFORE = {"memory_format": "contiguous", "eval_batch_size": 1000, "precision": "fp32"}   # before the layout choice


def plain_epoch(model, dataset, mean, std, spec, batch_size, optimizer, generator, bf16=False) -> float:
    """The loop a PyTorch user would write by hand (bf16: with the autocast line added), each batch
    resized to the run's size where it has one (dataset.pixels); returns seconds."""
    model.train()
    t0 = time.perf_counter()
    labels = dataset.labels
    perm = torch.randperm(len(labels), generator=generator)
    for lo in range(0, len(perm), batch_size):
        idx = perm[lo: lo + batch_size]
        x = augment_batch(normalize(dataset.pixels(idx), mean, std), spec, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def interleave(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Round 0 warms every contender up (compilation, kernel choice) and is not kept."""
    out = {name: [] for name in contenders}
    for r in range(rounds + 1):
        line = []
        for name, run in contenders.items():
            value = run(r)
            if r:
                out[name].append(value)
            line.append(f"{name} {value:8.1f}")
        print(f"  round {r}{' (warm-up)' if r == 0 else '':10s}: " + ", ".join(line), flush=True)
    return out


def table(results: dict[str, list[float]], unit: str, reference: str) -> None:
    ref = statistics.median(results[reference])
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:32s} {med:9.1f} {unit}   x{med / ref:5.2f} vs {reference}")


def wanted(args, name: str) -> bool:
    return not args.arms or name in args.arms


def make_trainer(splits, mean, std, meter, model_name, gate=None, **cfg) -> Trainer:
    config = TrainConfig(**{"epochs": 1000, "batch_size": 128, "lr": 0.05, "seed": 0, **cfg})
    model = build_model(model_name, splits.train.num_classes, splits.train.input_shape[0])
    return Trainer(config, splits, model, mean, std, torch.device("cpu"), seed_everything(0),
                   gate or Strategy(), Updater(), meter=meter, quiet=True)


def part_a(args, splits, mean, std, meter):
    n = len(splits.train)
    print(f"\nA. dense training, {n} samples/epoch, batch {args.batch_size}: samples/s (evaluation excluded)")
    no_eval = copy.copy(splits)
    no_eval.val = splits.val.subset(torch.arange(0))
    no_eval.test = splits.test.subset(torch.arange(0))
    arms = {
        "edge-sel before (contiguous, fp32)": BEFORE,
        "edge-sel fp32": {"precision": "fp32"},
        "edge-sel default": {},
        "edge-sel bf16": {"precision": "bf16"},
        "edge-sel channels_last": {"memory_format": "channels_last"},
        "edge-sel --compile": {"compile": True},
    }
    trainers = {name: make_trainer(no_eval, mean, std, meter, args.model, batch_size=args.batch_size, **cfg)
                for name, cfg in arms.items()
                if wanted(args, name)}
    if "edge-sel default" in trainers:
        default = trainers["edge-sel default"]
        print(f"  edge-sel default layout on this device: {default.layout.to_json()}")
        print(f"  edge-sel default precision on this device: {default.precision.to_json()}")
    m, s, gen = torch.tensor(mean), torch.tensor(std), torch.Generator().manual_seed(0)

    def plain(bf16):
        model = build_model(args.model, splits.train.num_classes, splits.train.input_shape[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        return lambda r: n / plain_epoch(model, splits.train, m, s, splits.train.augment, args.batch_size, opt, gen, bf16)

    def ours(trainer):
        def run(r):
            t0 = time.perf_counter()
            record = trainer.train_epoch(r)
            return n / (time.perf_counter() - t0 - (record["eval_wall_s"] or 0.0))
        return run
    contenders = {"plain loop": plain(False)}
    if wanted(args, "plain loop bf16"):
        contenders["plain loop bf16"] = plain(True)
    contenders.update({name: ours(t) for name, t in trainers.items()})
    results = interleave(contenders, args.rounds)
    table(results, "samples/s", "plain loop")
    return results


def part_b(args, splits, mean, std, meter):
    ds = splits.test
    print(f"\nB. evaluation over {len(ds)} test images: images/s")
    default = make_trainer(splits, mean, std, meter, args.model)
    model = default.model.eval()
    before = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    fmt, bs = default.memory_format, default.eval_batch_size

    def rate(net, batch, layout, precision="fp32"):
        def run(r):
            def predict(x):
                with autocast("cpu", precision):
                    return net(x).float()
            t0 = time.perf_counter()
            predict_dataset(predict, ds, mean, std, batch, layout)
            return len(ds) / (time.perf_counter() - t0)
        return run
    chosen = default.precision.eval
    print(f"  default precision for evaluation: {chosen} ({default.precision.reason})")
    arms = {"before (contiguous, batch 1000)": rate(before, 1000, torch.contiguous_format),
            f"{default.layout.memory_format}, batch {bs}, fp32": rate(model, bs, fmt)}
    if chosen != "fp32":
        arms[f"default ({default.layout.memory_format}, batch {bs}, {chosen})"] = rate(model, bs, fmt, chosen)
    arms[f"{default.layout.memory_format}, batch {bs}, bf16"] = rate(model, bs, fmt, "bf16")
    results = interleave(arms, args.rounds)
    table(results, "images/s", "before (contiguous, batch 1000)")
    return results


def part_c(args, splits, mean, std, meter):
    print(f"\nC. a sundew epoch at activation 0.3 including its evaluation ({len(splits.train)} candidates, "
          f"{len(splits.val)} validation, {len(splits.test)} test images): seconds")
    method = {"target_activation": 0.3}
    before = make_trainer(splits, mean, std, meter, args.model, make_strategy("sundew", method), strategy="sundew",
                          eval_test="every", **BEFORE)
    after = make_trainer(splits, mean, std, meter, args.model, make_strategy("sundew", method), strategy="sundew")

    def epoch(trainer):
        def run(r):
            record = trainer.train_epoch(r)
            trainer.records.append(record)
            return record["wall_s"] + record["eval_wall_s"]
        return run
    results = interleave({"before (val+test, contiguous)": epoch(before), "default (val only)": epoch(after)},
                         args.rounds)
    for name, t in (("before (val+test, contiguous)", before), ("default (val only)", after)):
        last = t.records[-1]
        print(f"  {name:32s} train {last['wall_s']:.2f} s, evaluation {last['eval_wall_s']:.2f} s, "
              f"activation {last['activation']:.2f}, evaluated {last['evaluated']}")
    ref = statistics.median(results["before (val+test, contiguous)"])
    new = statistics.median(results["default (val only)"])
    print(f"  median epoch incl. evaluation: before {ref:.2f} s, default {new:.2f} s, ratio {new / ref:.2f} "
          f"(aim <= 0.5)")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=f"folder:{CIFAR}" if (CIFAR / "train").is_dir() else "synthetic")
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--model", default="edgecnn", help="A built-in model (part A; parts B and C build it too).")
    ap.add_argument("--image-size", type=int, default=None, help="Folder images resized to S x S a batch at a time.")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="ABC", help="Which parts to run, e.g. A or BC.")
    ap.add_argument("--arms", type=lambda v: [a.strip() for a in v.split(",")], default=None,
                    help="Part A: only these contenders (comma-separated names as printed; the plain loop always runs).")
    ap.add_argument("--busy", type=int, default=0, help="Busy processes started beside every part (figures under load).")
    ap.add_argument("--busy-nice", type=int, default=0, help="Their nice level.")
    args = ap.parse_args()

    train_full, test = load_source(args.dataset, image_size=args.image_size)
    # 5% of the training part as validation: 2,500 images on CIFAR-10, as a fine-tune on a shard sees.
    splits = make_splits(train_full, test, subset=min(args.subset, len(train_full) - 1), val_fraction=0.05)
    mean, std = splits.train.channel_stats()
    meter = EnergyOptions().open()
    print(f"{args.model} at {splits.train.input_shape[-1]} px, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.dataset}, "
          f"CPU bf16 instructions: {native_bf16(torch.device('cpu'))}")
    print(f"other work on the CPU: {contention.describe(args.busy, args.busy_nice)}")
    try:
        with contention.busy(args.busy, args.busy_nice):
            for part, fn in (("A", part_a), ("B", part_b), ("C", part_c)):
                if part in args.parts.upper():
                    fn(args, splits, mean, std, meter)
    finally:
        meter.close()


if __name__ == "__main__":
    main()
