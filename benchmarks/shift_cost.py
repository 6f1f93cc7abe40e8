"""What a shift costs a model, no adaptation: its test accuracy on every corruption at given
severities, the docs' table (docs/adaptation.md, "What a shift costs").

    python benchmarks/shift_cost.py --checkpoint ckpt/cifar-edgecnn --dataset folder:../shared/data/cifar10-jpeg

Each cell is the figure `edge-sel finetune --checkpoint C --dataset D --epochs 0 --shift
corrupt=NAME:SEV` reports as its test accuracy (the test split corrupted with the default shift
seed), computed without the run around it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edge_sel.data.corruptions import CORRUPTIONS, corrupt
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.models import load_checkpoint
from edge_sel.predict.conditions import normalised


@torch.no_grad()
def accuracy(model, images, labels, mean, std, batch=500) -> float:
    right = 0
    for i in range(0, len(images), batch):
        logits = model(normalised(images[i:i + batch], mean, std))
        right += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return right / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", default="folder:../shared/data/cifar10-jpeg")
    parser.add_argument("--severities", default="3,5")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS), help="comma-separated, in the table's order")
    args = parser.parse_args()
    severities = [int(s) for s in args.severities.split(",")]
    names = args.corruptions.split(",")
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        parser.error(f"--corruptions: unknown {', '.join(unknown)}")
    model, card = load_checkpoint(args.checkpoint)
    model.eval()
    test = DataOptions(args.dataset).load().test
    print(f"clean: {100 * accuracy(model, test.images, test.labels, card.mean, card.std):.1f}%")
    print("| corruption | " + " | ".join(f"severity {s}" for s in severities) + " |")
    print("|---|" + "---|" * len(severities))
    for name in names:
        cells = [accuracy(model, corrupt(test.images, test.index, name, s, seed=0, pool="test"), test.labels,
                          card.mean, card.std) for s in severities]
        print(f"| {name} | " + " | ".join(f"{100 * a:.1f}%" for a in cells) + " |")


if __name__ == "__main__":
    main()
