"""How far apart draws of one kind of images lie in the BatchNorm statistics distance a device's
confirmation reads (engine/loop/statistics_distance.py), against how far a corrupted camera lies:
the distance of a checkpoint's running statistics from disjoint draws of training images, clean and
under the bench's corruptions (Gaussian noise 3, contrast 4), at the checkpoint's input size, each with
the standard error the device reads from the draw itself (its groups' spread).

    python benchmarks/distance_spread.py --checkpoint START [--images ../shared/data/cifar10-jpeg/train]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edge_sel.core.checkpoint import read_card
from edge_sel.data.corruptions import corrupt
from edge_sel.engine.loop.statistics_distance import distance_and_logits
from edge_sel.models import load_checkpoint

KINDS = {"clean": None, "Gaussian noise 3": ("gaussian_noise", 3), "contrast 4": ("contrast", 4)}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=here.parent / "shared/data/cifar10-jpeg/train",
                        help="a folder of class folders of images")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--per-draw", type=int, default=256, help="images a draw (a device's confirmation reads 256)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    card = read_card(args.checkpoint)
    side = card.input_shape[-1]
    mean = torch.tensor(card.mean).view(1, 3, 1, 1)
    std = torch.tensor(card.std).view(1, 3, 1, 1)
    model, _ = load_checkpoint(args.checkpoint)
    files = sorted(p for p in args.images.glob("*/*") if p.is_file())
    random.Random(0).shuffle(files)
    files = files[:args.draws * args.per_draw]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((side, side), Image.BILINEAR))
                                           .copy()).permute(2, 0, 1) for f in files])
    print(f"{args.checkpoint}: {args.draws} disjoint draws of {args.per_draw} images at {side} px; "
          f"the card's own distance: {(card.set_gains or {}).get('bn_distance')}")
    for kind, spec in KINDS.items():
        x = pixels if spec is None else corrupt(pixels, torch.arange(len(pixels)), *spec, seed=0)
        x = (x.float() / 255 - mean) / std
        found = [distance_and_logits(model, x[i * args.per_draw:(i + 1) * args.per_draw])[:2] for i in range(args.draws)]
        d = [v for v, _ in found]
        print(f"| {kind} | {', '.join(f'{v:.4f} +-{se:.4f}' for v, se in found)} | spread {max(d) - min(d):.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
