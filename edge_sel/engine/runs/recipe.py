"""Which recipe a pretrain from pretrained weights runs, chosen by the data (`--recipe auto`).

On few images, training everything from a random head loses to the linear probe of the same
features (docs/transfer.md: 2,000 CIFAR-10 images at 96 px, 67.3% against the probe's 68.3%), and
so did a probe followed by training everything with the backbone at a tenth of the learning rate and
the BatchNorm statistics frozen (LP-FT, Kumar et al. 2022: 15.2% validation after its first
fine-tuning epoch); on the whole shard training everything wins. So below SMALL_DATA training images
a transfer is a linear probe for all of --epochs (the head alone, the backbone and its statistics
frozen): a warmup at least its probe. Elsewhere, or where the user set any head-stage option, the
run is as documented or as typed.
"""

from __future__ import annotations

from edge_sel.config import TrainConfig
from edge_sel.errors import InputError

RECIPES = ("auto", "full", "probe")
SMALL_DATA = 10_000     # training images; 2,000 and 5,000 measured small, the 22,500 of a shard not
LP_HEAD_LR = 0.1        # a linear probe's learning rate (docs/transfer.md)


def _head_options_given(cfg: TrainConfig) -> list[str]:
    given = {"--head-epochs": cfg.head_epochs != 0, "--head-lr": cfg.head_lr is not None,
             "--head-bn-adapt": cfg.head_bn_adapt != 0, "--backbone-lr-scale": cfg.backbone_lr_scale != 1.0,
             "--bn-mode": cfg.bn_mode is not None}
    return [name for name, yes in given.items() if yes]


def choose_recipe(cfg: TrainConfig, train_images: int, transfer: bool,
                  distributed: bool = False) -> tuple[dict, str | None]:
    """Set `cfg` for the recipe it asks for (cfg.recipe: auto, full or probe) on `train_images`;
    `transfer`: the weights start pretrained; `distributed`: under torchrun, where a head stage
    cannot run. Returns the record of the choice and the line to say."""
    asked = cfg.recipe
    if asked not in RECIPES:
        raise InputError(f"--recipe {asked}: expected one of {', '.join(RECIPES)}")
    given = _head_options_given(cfg)
    if asked == "probe" and not transfer:
        raise InputError("--recipe probe: a linear probe needs pretrained features; give --pretrained or --init-weights")
    if asked == "probe" and given:
        raise InputError(f"--recipe probe sets {', '.join(given)} itself; give --recipe full to set them by hand")
    if not transfer:
        cfg.recipe = "full"
        return {"name": "full", "why": "no pretrained start"}, None
    if given:
        cfg.recipe = "given"
        return {"name": "given", "why": f"set by {', '.join(given)}"}, None
    small = train_images < SMALL_DATA
    if asked == "probe" and distributed:
        raise InputError("--recipe probe: a head stage runs in one process; pretrain without torchrun")
    if asked == "full" or (asked == "auto" and not small) or cfg.epochs == 0 or distributed:
        why = ("--recipe full" if asked == "full" else "--epochs 0" if cfg.epochs == 0
               else "under torchrun, where a head stage cannot run" if distributed
               else f"{train_images:,} training images, at least {SMALL_DATA:,}")
        cfg.recipe = "full"
        return {"name": "full", "why": why}, (f"recipe: everything trains from the first step ({why})"
                                              if asked == "auto" else None)
    why = "--recipe probe" if asked == "probe" else f"{train_images:,} training images, fewer than {SMALL_DATA:,}"
    head = cfg.epochs
    cfg.recipe, cfg.head_epochs, cfg.epochs, cfg.head_lr = "probe", head, 0, LP_HEAD_LR
    cfg.warmup_epochs = 0.0
    line = (f"recipe: a linear probe ({why}): the new head alone for all {head} epochs (head lr {LP_HEAD_LR:g}, "
            f"the backbone and its BatchNorm statistics frozen); on this few images, training the backbone after "
            f"it lost to it; --recipe full trains everything from the first step (docs/transfer.md)")
    return {"name": "probe", "why": why, "head_epochs": head, "epochs": 0, "head_lr": LP_HEAD_LR}, line
