"""`--bn-adapt N` inside a run: BatchNorm statistics re-estimated on unlabelled local images (and
replay anchors) before the first epoch plans, the re-estimated model a keep-best candidate of its
own, or with `--epochs 0` the whole run."""

from __future__ import annotations

import time

import torch

from edge_sel.engine.evaluation.bn_adapt import not_applicable, reestimate_bn, with_anchors
from edge_sel.engine.evaluation.keep import BN_ADAPT_EPOCH
from edge_sel.engine.loop import epoch_record


def adapt_bn(trainer) -> None:
    """BatchNorm statistics from `--bn-adapt` unlabelled local training images (a seeded draw
    that leaves the run's own random stream alone); counted as forward FLOPs."""
    trainer.bn_adapt_pending = not_applicable(trainer.model)
    if trainer.bn_adapt_pending is not None:
        trainer.bn_adapt_done = True
        return
    cfg = trainer.config
    # --bn-anchor-share: round(N x S) of the N images are replay anchors, the rest local.
    anchors = min(round(cfg.bn_adapt * cfg.bn_anchor_share), len(trainer.memory.replay)) if cfg.bn_anchor_share else 0
    n = min(cfg.bn_adapt - anchors, len(trainer.train_ds))
    draw = torch.Generator().manual_seed(cfg.seed + 7919)
    positions = torch.randperm(len(trainer.train_ds), generator=draw)[:n].to(trainer.device)
    images = trainer.train_ds
    if anchors:
        images, positions = with_anchors(trainer.train_ds, positions, trainer.memory.replay, anchors, draw)
    with trainer.eval_autocast():
        sizes = reestimate_bn(trainer.model, images, positions, trainer.mean, trainer.std,
                              batch_size=getattr(trainer, "bn_adapt_batch", 256), memory_format=trainer.memory_format)
    trainer.bn_adapt_pending = {"bn_adapt_samples": n + anchors,
                                "flops_bn_adapt": sum(trainer.flops.eval_batch(s) for s in sizes)}
    if cfg.bn_anchor_share:
        trainer.bn_adapt_pending["bn_adapt_anchor_samples"] = anchors
    trainer.log.bn_adapt(n, trainer.bn_adapt_pending["flops_bn_adapt"], anchors)
    trainer.bn_adapt_done = True


def consider_bn_adapted(trainer) -> float:
    """With training to follow, the re-estimated model is validated and becomes a keep-best
    candidate of its own: on wrong labels a fine-tune can end below re-estimation alone.
    Returns the evaluation's seconds (taken out of the epoch's training time)."""
    if "bn_adapt" in trainer.bn_adapt_pending:      # not applicable: the model did not change
        return 0.0
    ev = trainer.evaluate(validate=True, test=False)
    trainer.choice.consider(BN_ADAPT_EPOCH, ev["val_acc"], None, trainer.model, ev.get("anchor_acc"),
                            trainer.eval_sets.val_right)
    trainer.bn_adapt_pending["bn_adapt_val_acc"] = ev["val_acc"]
    if "anchor_acc" in ev:
        trainer.bn_adapt_pending["bn_adapt_anchor_acc"] = ev["anchor_acc"]
    trainer.log.line(f"evaluation: the BatchNorm-adapted model: val {ev['val_acc']:.3f}"
                     f"{trainer.log.anchors(ev)} ({ev['eval_wall_s']:.1f} s)")
    trainer.bn_adapt_pending["candidate_eval"] = {k: ev[k] for k in ("flops_eval", "eval_wall_s", "eval_energy_j",
                                                                   "val_samples_evaluated", "anchor_samples_evaluated",
                                                                   "flops_anchor") if k in ev}
    return ev["eval_wall_s"]


def bn_adapt_record(trainer) -> dict:
    """`--epochs 0 --bn-adapt N`: the re-estimation alone, measured and evaluated as epoch 0."""
    trainer.meter.begin("train")
    t0 = time.perf_counter()
    adapt_bn(trainer)
    wall = time.perf_counter() - t0
    energy = trainer.meter.end("train")
    info, trainer.bn_adapt_pending = trainer.bn_adapt_pending, None
    record = {**epoch_record.bn_adapt_fields(trainer.strategy.name, len(trainer.train_ds), info, wall, energy),
              **epoch_record.bn_fields(trainer)}
    record.update(trainer.evaluate())
    return record
