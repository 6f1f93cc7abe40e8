"""Which recipe a pretrain from pretrained weights runs, chosen by the data (`--recipe auto`).

On few images, training everything from a random head loses to the linear probe of the same
features (docs/transfer.md: 2,000 CIFAR-10 images at 96 px); on the whole shard it wins. So below
SMALL_DATA training images a transfer runs LP-FT (Kumar et al. 2022): the head alone first (a linear
probe on frozen features, BatchNorm statistics frozen), then everything with the backbone at a tenth
of the learning rate and the statistics still frozen, so the fine-tuning stage starts from the probe
and keeps it. The head stage's epochs come out of --epochs: the same epoch budget either way.
Elsewhere, or where the user set any head-stage option, the run is as documented or as typed.
"""

from __future__ import annotations

import math

from edge_sel.config import TrainConfig
from edge_sel.errors import InputError

RECIPES = ("auto", "full", "lp-ft")
SMALL_DATA = 10_000     # training images; 2,000 and 5,000 measured small, the 22,500 of a shard not
LP_HEAD_LR = 0.1        # a linear probe's learning rate (docs/transfer.md)
LP_BACKBONE_SCALE = 0.1


def _head_options_given(cfg: TrainConfig) -> list[str]:
    given = {"--head-epochs": cfg.head_epochs != 0, "--head-lr": cfg.head_lr is not None,
             "--head-bn-adapt": cfg.head_bn_adapt != 0, "--backbone-lr-scale": cfg.backbone_lr_scale != 1.0,
             "--bn-mode": cfg.bn_mode is not None}
    return [name for name, yes in given.items() if yes]


def choose_recipe(cfg: TrainConfig, train_images: int, transfer: bool,
                  distributed: bool = False) -> tuple[dict, str | None]:
    """Set `cfg` for the recipe it asks for (cfg.recipe: auto, full or lp-ft) on `train_images`;
    `transfer`: the weights start pretrained; `distributed`: under torchrun, where a head stage
    cannot run. Returns the record of the choice and the line to say."""
    asked = cfg.recipe
    if asked not in RECIPES:
        raise InputError(f"--recipe {asked}: expected one of {', '.join(RECIPES)}")
    given = _head_options_given(cfg)
    if asked == "lp-ft" and not transfer:
        raise InputError("--recipe lp-ft: a linear probe needs pretrained features; give --pretrained or --init-weights")
    if asked == "lp-ft" and given:
        raise InputError(f"--recipe lp-ft sets {', '.join(given)} itself; give --recipe full to set them by hand")
    if not transfer:
        cfg.recipe = "full"
        return {"name": "full", "why": "no pretrained start"}, None
    if given:
        cfg.recipe = "given"
        return {"name": "given", "why": f"set by {', '.join(given)}"}, None
    small = train_images < SMALL_DATA
    if asked == "lp-ft" and distributed:
        raise InputError("--recipe lp-ft: a head stage runs in one process; pretrain without torchrun")
    if asked == "full" or (asked == "auto" and not small) or cfg.epochs == 0 or distributed:
        why = ("--recipe full" if asked == "full" else "--epochs 0" if cfg.epochs == 0
               else "under torchrun, where a head stage cannot run" if distributed
               else f"{train_images:,} training images, at least {SMALL_DATA:,}")
        cfg.recipe = "full"
        return {"name": "full", "why": why}, (f"recipe: everything trains from the first step ({why})"
                                              if asked == "auto" else None)
    head = max(1, math.ceil(cfg.epochs / 3))
    why = "--recipe lp-ft" if asked == "lp-ft" else f"{train_images:,} training images, fewer than {SMALL_DATA:,}"
    cfg.recipe, cfg.head_epochs, cfg.epochs = "lp-ft", head, cfg.epochs - head
    cfg.head_lr, cfg.backbone_lr_scale, cfg.bn_mode = LP_HEAD_LR, LP_BACKBONE_SCALE, "eval"
    cfg.warmup_epochs = min(cfg.warmup_epochs, float(cfg.epochs))
    then = (f", then everything for {cfg.epochs} with the backbone at {LP_BACKBONE_SCALE:g} x lr and the statistics "
            f"still frozen" if cfg.epochs else "; one epoch leaves none to fine-tune")
    line = (f"recipe: LP-FT ({why}): a linear probe for {head} of the {head + cfg.epochs} epochs (head lr "
            f"{LP_HEAD_LR:g}, BatchNorm statistics frozen){then}; --recipe full trains everything from the first "
            f"step (docs/transfer.md)")
    return {"name": "lp-ft", "why": why, "head_epochs": head, "epochs": cfg.epochs, "head_lr": LP_HEAD_LR,
            "backbone_lr_scale": LP_BACKBONE_SCALE, "bn_mode": "eval"}, line
