"""edge-sel's dense epoch against a plain hand-written PyTorch loop, side by side in one run.

Same model (edgecnn), data, batch size, optimizer (SGD, Nesterov momentum 0.9, wd 5e-4) and
augmentation ops. Rounds alternate (ours, plain, ours, plain, ...) so background load hits both
alike; the ratio of median samples per second is printed. edge-sel's time covers everything its
epoch does except evaluation: planning, per-sample losses, FLOP bookkeeping, E_c, the energy
sampler thread, the parameter-change measurement.

    python tools/bench_loop.py                      # CIFAR-10 JPEG folders when present, else synthetic
    python tools/bench_loop.py --subset 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from edge_sel.config import TrainConfig
from edge_sel.data import load_source, make_splits
from edge_sel.data.augment import augment_batch, normalize
from edge_sel.engine.device import seed_everything
from edge_sel.engine.energy_setup import EnergyOptions
from edge_sel.engine.trainer import Trainer
from edge_sel.methods import Strategy, Updater
from edge_sel.models import build_model

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def plain_epoch(model, images, labels, mean, std, spec, batch_size, optimizer, generator) -> float:
    """The loop a PyTorch user would write by hand; returns seconds."""
    model.train()
    t0 = time.perf_counter()
    perm = torch.randperm(len(labels), generator=generator)
    for lo in range(0, len(perm), batch_size):
        idx = perm[lo: lo + batch_size]
        x = augment_batch(normalize(images[idx], mean, std), spec, generator)
        loss = nn.functional.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=f"folder:{CIFAR}" if (CIFAR / "train").is_dir() else "synthetic")
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    train_full, test = load_source(args.dataset)
    splits = make_splits(train_full, test, subset=min(args.subset, len(train_full) - 1), val_fraction=0.02)
    splits.test = splits.test.subset(torch.arange(min(500, len(splits.test))))
    mean, std = splits.train.channel_stats()
    cfg = TrainConfig(epochs=args.rounds, batch_size=args.batch_size, lr=0.05, seed=0)
    n = len(splits.train)

    ours = build_model("edgecnn", train_full.num_classes, train_full.input_shape[0])
    meter = EnergyOptions().open()
    trainer = Trainer(cfg, splits, ours, mean, std, torch.device("cpu"), seed_everything(0), Strategy(), Updater(),
                      meter=meter, quiet=True)

    plain = build_model("edgecnn", train_full.num_classes, train_full.input_shape[0])
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    m, s = torch.tensor(mean), torch.tensor(std)
    gen = torch.Generator().manual_seed(0)

    ours_sps, plain_sps = [], []
    for r in range(args.rounds + 1):            # round 0 warms both up and is not counted
        t0 = time.perf_counter()
        record = trainer.train_epoch(r)
        ours_s = time.perf_counter() - t0 - record["eval_wall_s"]
        plain_s = plain_epoch(plain, splits.train.images, splits.train.labels, m, s, splits.train.augment,
                              args.batch_size, opt, gen)
        if r > 0:
            ours_sps.append(n / ours_s)
            plain_sps.append(n / plain_s)
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: edge-sel {n / ours_s:7.1f} samples/s, "
              f"plain loop {n / plain_s:7.1f} samples/s")
    meter.close()
    ratio = statistics.median(ours_sps) / statistics.median(plain_sps)
    print(f"\n{n} samples/epoch, batch {args.batch_size}, edgecnn, {torch.get_num_threads()} threads, {args.dataset}")
    print(f"median samples/s: edge-sel {statistics.median(ours_sps):.1f}, plain {statistics.median(plain_sps):.1f}")
    print(f"ratio edge-sel / plain = {ratio:.3f} (aim >= 0.95)")


if __name__ == "__main__":
    main()
