"""How far apart conditions lie in the bank's matching distance (edge_sel/engine/evaluation/bn_bank.py):
draws of 256 training images of shard 1/2, clean and corrupted, each pair's distance.

    python benchmarks/condition_distances.py --dataset folder:../shared/data/cifar10-jpeg [--draws 2]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from edge_sel.data.corruptions import corrupt
from edge_sel.engine.evaluation.bn_bank import distance, images_fingerprint
from edge_sel.engine.runs.data_options import DataOptions

CONDITIONS = {"clean": None, "gaussian_noise:3": ("gaussian_noise", 3), "fog:3": ("fog", 3),
              "contrast:4": ("contrast", 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    train = DataOptions(args.dataset, shard="1/2").load().train
    mean, std = train.channel_stats()
    g = torch.Generator().manual_seed(0)
    for draw in range(args.draws):
        pick = torch.randperm(len(train), generator=g)[:args.images]
        x, index = train.images[pick], train.index[pick]
        stats = {name: images_fingerprint(x if c is None else corrupt(x, index, *c), mean, std)
                 for name, c in CONDITIONS.items()}
        for a, b in itertools.combinations(CONDITIONS, 2):
            print(f"draw {draw}: {a} - {b}: {float(distance(*stats[a], *stats[b])):.3f}")


if __name__ == "__main__":
    main()
