"""How many validation samples and guard anchors a device can afford: with `val_share` set (every
fine-tune sets 0.2 unless told otherwise), every validation pass the run will make (the starting
model, the BatchNorm-adapted candidate, each validated epoch) costs at most that share of the run's
counted compute. Validation never goes under MIN_SAMPLES (below that an accuracy difference of a few
points is noise) and the guard anchors never under the floor their --max-forgetting needs
(engine/levers/guard_set.py); above the floors both get the same share of what they hold, never more.
On a cheap adaptation, validating 5,000 CIFAR-10 images after every epoch was nearly all of the
joules; 500 guard anchors at every pass, a third of a 1,000-image Lite0 run's.

A fine-tune that keeps its last epoch validates only that epoch (what its summary, card and promote
report), unless --eval-every was given or its strategy reads validation (a curriculum's stage gates)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from edge_sel.config import DEVICE_VAL_SHARE, TrainConfig
from edge_sel.core.flops import FlopCounter
from edge_sel.engine.evaluation.evaluate import validation_subset
from edge_sel.engine.levers.guard_set import guard_floor
from edge_sel.methods.presets import typed

MIN_SAMPLES = 300


def share_for_device(cfg: TrainConfig) -> bool:
    """Every fine-tune validates on what its decisions and its report need, as --preset adapt does: a
    fifth of the counted compute at most, never under MIN_SAMPLES, so validation scales with the images
    the run trains on (--subset included). A one-epoch run of 300 images at 64 px spent 95% of its
    830 J validating the shard's 5,000 images twice; Lite0 at 96 px under 1/10 of full FT's memory,
    51-53% of a 2,000-image run's joules; a --keep last run of 1,000 images 79%, validating the whole
    split every epoch for a choice it does not make. --val-subset (0 included: the whole split) and a
    share already set win. Returns whether it set the share."""
    given = cfg.val_subset or cfg.val_share or "val_subset" in (cfg.explicit or ())
    if given:
        return False
    cfg.val_share = DEVICE_VAL_SHARE
    return True


def keeps_last_only(cfg: TrainConfig, phase: str, reads_validation: bool = False) -> bool:
    """A fine-tune that keeps its last epoch validates that epoch alone: nothing else is reported
    or decided by it (unless --eval-every K asks, or the strategy's stage gates read it)."""
    return phase == "finetune" and cfg.keep == "last" and not reads_validation and not cfg.eval_every


def validates_epoch(cfg: TrainConfig, phase: str, epoch: int, final: bool, reads_validation: bool = False) -> bool:
    if final:
        return True
    if keeps_last_only(cfg, phase, reads_validation):
        return False
    return (epoch + 1) % (cfg.eval_every or 1) == 0


def validated_epochs(cfg: TrainConfig, phase: str, reads_validation: bool = False) -> int:
    """Epochs validated when the run trains all it plans (the last always)."""
    if not cfg.epochs:
        return 0
    if keeps_last_only(cfg, phase, reads_validation):
        return 1
    return math.ceil(cfg.epochs / (cfg.eval_every or 1))


def validation_passes(cfg: TrainConfig, phase: str, reads_validation: bool = False, start: bool = True) -> int:
    """`start`: False where the start is not evaluated though asked (engine/loop/start.py: at chance)."""
    baseline = 1 if phase == "finetune" and cfg.evaluate_start and start else 0
    candidate = 1 if cfg.bn_adapt and cfg.epochs and cfg.keep == "best" and phase == "finetune" else 0
    epochs = validated_epochs(cfg, phase, reads_validation) if cfg.epochs else 1    # --epochs 0: the adapted model
    return baseline + candidate + epochs


def shared_sizes(budget: float, sets: list[tuple[int, int]]) -> list[int]:
    """Sizes of sets (held, floor) that together fit `budget` images, each the same share of what it
    holds, never under its floor nor over what it holds (floors first, where they alone exceed it)."""
    def sizes(share: float) -> list[int]:
        return [min(held, max(floor, int(share * held))) for held, floor in sets]
    low, high = 0.0, 1.0
    if sum(sizes(high)) <= budget:
        return sizes(high)
    for _ in range(60):         # the total grows with the share: halve the interval to the budget
        mid = (low + high) / 2
        low, high = (mid, high) if sum(sizes(mid)) <= budget else (low, mid)
    return sizes(low)


def device_val_size(cfg: TrainConfig, phase: str, train_size: int, val_size: int, flops: FlopCounter,
                    guard_anchors: int = 0, trains: set[str] | None = None, reads_validation: bool = False,
                    start: bool = True) -> dict:
    """The subset sizes and how they were reached (kept in the summary); `guard_anchors`: the guard
    anchors the checkpoint ships, which every validation also evaluates (sized here with it);
    `trains`: the parameters the run's step trains (None: every one), whose step's FLOPs the
    validation is a share of."""
    activation = cfg.method.get("target_activation") or 1.0
    with training_only(flops.model, trains):
        forward, backward = flops.train_step(cfg.batch_size)
    per_sample_train = (forward + backward) / cfg.batch_size
    per_image_eval = flops.eval_batch(1)
    training = cfg.epochs * activation * train_size * per_sample_train + cfg.bn_adapt * per_image_eval
    passes = validation_passes(cfg, phase, reads_validation, start)
    # validation / (training + validation) <= share  <=>  validation <= share / (1 - share) * training
    per_pass = cfg.val_share / (1 - cfg.val_share) * training / (passes * per_image_eval)
    anchor_floor = guard_floor(cfg.max_forgetting, guard_anchors)
    size, anchors = shared_sizes(per_pass, [(val_size, min(MIN_SAMPLES, val_size)), (guard_anchors, anchor_floor)])
    # Whether a choice between epochs is affordable at all: the guard's anchors judge forgetting, a
    # decision of their own, so they do not count against it.
    return {"val_subset": size, "of": val_size, "affordable": max(0, int(per_pass)),
            "validates": per_pass >= min(MIN_SAMPLES, val_size), "share_target": cfg.val_share, "validation_passes": passes,
            "guard_anchors_per_pass": anchors, "guard_anchors_held": guard_anchors, "guard_floor": anchor_floor,
            "expected_training_flops": int(training),
            "expected_validation_flops": int(passes * (size + anchors) * per_image_eval),
            "floor": MIN_SAMPLES, "rule": "counted FLOPs of the planned training and validation passes"}


@contextmanager
def training_only(model: torch.nn.Module, names: set[str] | None):
    """The model's requires_grad flags as a step that trains `names` sets them (None: as they are),
    for counting that step; the flags are put back after."""
    if names is None:
        yield
        return
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def validation_set(cfg: TrainConfig, phase: str, train_ds, val_ds, model, memory, trains: set[str] | None = None,
                   reads_validation: bool = False, start: bool = True) -> tuple:
    """The validation samples per-epoch decisions use and how their number was reached: `--val-subset
    N` as given (a fixed draw), or with `val_share` N sized for a device here and written into the
    config (what ran), with the guard anchors each pass evaluates (`guard_subset`). `memory`: the
    checkpoint's source memory, whose guard anchors every validation also evaluates; `trains`: what
    the run's step trains (a fixed set's names), so that validation is a share of that step's
    compute, not of full fine-tuning's (bn+classifier on Lite0 at 96 px validated 990 images a pass
    where its own step affords 657)."""
    choice = None
    if cfg.val_subset == 0 and cfg.val_share:
        choice = device_val_size(cfg, phase, len(train_ds), len(val_ds), FlopCounter(model, train_ds.input_shape),
                                 0 if memory is None else len(memory.guard), trains, reads_validation, start)
        cfg.guard_subset = choice["guard_anchors_per_pass"]
        # A run of no epoch (statistics alone) decides only whether to keep them: that decision is the
        # run. A guard over the source's anchors refuses an epoch that forgets: it chooses, so it validates.
        # A run that keeps its last epoch reports the last's validation at the floor.
        guarded = memory is not None and cfg.max_forgetting is not None
        if not choice["validates"] and cfg.epochs and not guarded and not typed(cfg, "keep"):
            return no_validation(cfg, val_ds, memory, choice)
        cfg.val_subset = choice["val_subset"]
    return validation_subset(val_ds, cfg.val_subset), choice


def no_validation(cfg: TrainConfig, val_ds, memory, choice: dict) -> tuple:
    """A run that cannot afford the images a decision by validation needs (MIN_SAMPLES, or the whole
    split where it holds fewer) decides nothing by it: it keeps its last epoch, validates on no image,
    and evaluates its start only where a reset judges it against the source's anchors. Lite0 at 96 px, one epoch of 500
    images: 300 validation images twice cost 2.5 times the epoch's training joules."""
    cfg.keep = "last"
    cfg.evaluate_start = memory is not None or cfg.reset_forgetting is not None
    choice.update(val_subset=0, rule=f"{choice['rule']}: fewer than the floor affordable, no validation")
    return val_ds.subset(torch.zeros(0, dtype=torch.long, device=val_ds.images.device)), choice
