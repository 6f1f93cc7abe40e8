"""How far one recipe's figure moves with the trial's data order alone: the server's trial of a set at
one recipe (engine/loop/set_gains.py: the same images, steps, schedule and scoring half), repeated
with the training images in K seeded orders and the held-out images fixed. A shipped figure is one
such trial; where two sets' trials spread wider than their gap, one trial cannot rank them.

    python benchmarks/recipe_spread.py --checkpoint START --orders 3 \
        --recipe "full FT:frozen:0.003" --recipe "bn+classifier:frozen:0.01"
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import torch

from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.bench.cli_common import dataset_or_shared_cifar
from edge_sel.core.checkpoint import read_card
from edge_sel.core.flops import FlopCounter
from edge_sel.core.memory import StepShape
from edge_sel.engine.loop.plan_sets import fixed_sets
from edge_sel.engine.loop.set_gains import HELD_OUT, TRIAL_SCHEDULE
from edge_sel.engine.loop.trial_gain import TrialImages, race, trial_images
from edge_sel.engine.machine.joule_plan import Candidate
from edge_sel.methods.objective import Objective
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.models import load_checkpoint


def recipe(text: str) -> tuple[str, str, float]:
    name, mode, lr = text.split(":")
    return name, mode, float(lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default=None, help="the server's data (default: the CIFAR-10 folders beside the repository)")
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--recipe", action="append", type=recipe, required=True, help="SET:MODE:LR, e.g. bn+classifier:frozen:0.01")
    args = parser.parse_args()
    torch.set_num_threads(1)
    card = read_card(args.checkpoint)
    config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    gains = card.set_gains or {}
    rows, steps = gains.get("rows", config["batch_size"]), (gains.get("steps") or [128])[-1]
    seen = card.dataset        # the pretrain's own split: its shard, subset and validation images
    splits = DataOptions(dataset_or_shared_cifar(args.dataset), shard=seen.get("shard"), subset=seen.get("subset"),
                         val_fraction=seen["val_fraction"], split_seed=seen.get("split_seed", 0),
                         image_size=card.input_shape[-1]).load()
    if splits.val.fingerprint() != seen.get("val_fingerprint", splits.val.fingerprint()):
        raise SystemExit(f"{args.checkpoint}: these are not the validation images its pretrain held out")
    model, _ = load_checkpoint(args.checkpoint)
    sets = dict(fixed_sets(model, None))
    mean, std = torch.tensor(card.mean), torch.tensor(card.std)
    held = min(HELD_OUT, len(splits.val))
    fixed = trial_images(splits.train, mean, std, rows, steps, 0, held, splits.val)
    scoring = torch.arange(held) >= held // 2          # the half a shipped figure is scored on
    optimizer = partial(make_optimizer, config["optimizer"], lr=config["lr"], momentum=config["momentum"],
                        weight_decay=config["weight_decay"])
    losses = Objective(config.get("label_smoothing") or 0.0, []).losses
    flops = FlopCounter(model, splits.train.input_shape)
    print(f"{args.checkpoint}: {steps} steps of {rows}, {TRIAL_SCHEDULE}; scored on {int(scoring.sum())} of {held} "
          f"held-out images; {args.orders} data orders")
    found = {}
    for name, mode, lr in args.recipe:
        accs = []
        for order in range(args.orders):
            drawn = trial_images(splits.train, mean, std, rows, steps, order, held, splits.val)
            images = TrialImages(splits.train, mean, std, drawn.train, fixed.held_x, fixed.held_y)
            c = Candidate(name, set(sets[name]), lr=lr)
            c.shape = StepShape(rows, bn_statistics=mode)
            race(model, [c], images, optimizer, losses, rows, steps, flops, (), TRIAL_SCHEDULE)
            accs.append(100 * float(c.correct[scoring].float().mean()))
            print(f"  {name} {mode} {lr:g}, order {order}: {accs[-1]:.1f}%", flush=True)
        found[(name, mode, lr)] = accs
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        print(f"| {name} | {mode} | {lr:g} | {', '.join(f'{a:.1f}' for a in accs)} | mean {statistics.fmean(accs):.2f} "
              f"| sd {sd:.2f} | card {recipe_on_card(gains, name, mode, lr)} |", flush=True)


def recipe_on_card(gains: dict, name: str, mode: str, lr: float) -> str:
    for r in ((gains.get("sets") or {}).get(name) or {}).get("recipes", []):
        if r["bn_statistics"] == mode and r["lr"] == lr and r["acc"]:
            return f"{100 * r['acc'][-1]:.1f}% at mark {len(r['acc'])}"
    return "-"


if __name__ == "__main__":
    main()
