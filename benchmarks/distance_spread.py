"""How far apart draws of one kind of images lie in the BatchNorm statistics distance a device's
confirmation reads (engine/loop/statistics_distance.py), against how far a corrupted camera lies:
the distance of a checkpoint's running statistics from disjoint draws of training images, clean and
under the bench's corruptions (Gaussian noise 3, contrast 4), at the checkpoint's input size, each with
the standard error the device reads from the draw itself (its groups' spread).

    python benchmarks/distance_spread.py --checkpoint START [--dataset folder:../shared/data/cifar10-jpeg]
"""

from __future__ import annotations

import argparse

import torch

from edge_sel.bench.cli_common import dataset_or_shared_cifar
from edge_sel.core.checkpoint import read_card
from edge_sel.data.augment import normalize
from edge_sel.data.corruptions import corrupt
from edge_sel.engine.loop.statistics_distance import distance_and_logits
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.models import load_checkpoint

KINDS = {"clean": None, "Gaussian noise 3": ("gaussian_noise", 3), "contrast 4": ("contrast", 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default=None, help="as finetune's (default: the CIFAR-10 folders beside the repository)")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--per-draw", type=int, default=256, help="images a draw (a device's confirmation reads 256)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    card = read_card(args.checkpoint)
    side = card.input_shape[-1]
    # The device's shard at the checkpoint's size, resized as a run resizes it, corrupted at that size.
    train = DataOptions(dataset_or_shared_cifar(args.dataset), shard="1/2", image_size=side).load().train
    model, _ = load_checkpoint(args.checkpoint)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.draws * args.per_draw]
    print(f"{args.checkpoint}: {args.draws} disjoint draws of {args.per_draw} images at {side} px; "
          f"the card's own distance: {(card.set_gains or {}).get('bn_distance')}")
    for kind, spec in KINDS.items():
        found = []
        for draw in pick.split(args.per_draw):
            pixels = train.pixels(draw)
            if spec is not None:
                pixels = corrupt(pixels, train.index[draw], *spec)
            found.append(distance_and_logits(model, normalize(pixels, torch.tensor(card.mean), torch.tensor(card.std)))[:2])
        d = [v for v, _ in found]
        print(f"| {kind} | {', '.join(f'{v:.4f} +-{se:.4f}' for v, se in found)} | spread {max(d) - min(d):.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
