"""The fields of one record: what an epoch trained, what it cost, and its closing counters.

Every cost is counted from passes actually run: training steps, scoring passes a strategy asked
for, an updater's or BatchNorm re-estimation's forward passes, and steps a rollback threw away.
The evaluation's fields come between the cost and the closing fields (engine/loop/trainer.py).
"""

from __future__ import annotations

import torch

from edge_sel.core import bn_stats
from edge_sel.data.frames import scene_of
from edge_sel.device_caps import peak_rss_mb
from edge_sel.engine.evaluation.evaluate import EmbarrassmentMeter
from edge_sel.engine.evaluation.keep import WARMUP_EPOCH
from edge_sel.engine.loop.progress import EpochProgress


def training_fields(epoch: int, phase: str, strategy: str, samples_available: int, progress: EpochProgress,
                    scoring: dict) -> dict:
    n_trained = progress.n_trained          # local rows: what the loss, accuracy and activation describe
    computed = n_trained + progress.replay_samples     # replayed anchors are trained and counted too
    return {
        "epoch": epoch, "phase": phase, "stage": progress.plan.info.get("stage"),
        "strategy": strategy, "samples_available": samples_available,
        "forward_samples": computed + scoring["samples"], "backward_samples": computed,
        "activation": n_trained / max(1, samples_available),
        "train_loss": progress.loss_sum / n_trained if n_trained else None,
        "train_acc": progress.correct / n_trained if n_trained else None,
    }


def stream_fields(train_ds, positions) -> dict:
    """On a camera's stream (edge_sel.data.frames): how many distinct scenes the epoch's plan trains
    on, of how many there are (a gate that sees redundancy covers more scenes at the same activation)."""
    if train_ds.frames <= 1:
        return {}
    scene = scene_of(train_ds)
    return {"scenes_available": int(torch.unique(scene).numel()),
            "scenes_planned": int(torch.unique(scene[positions.to(scene.device)]).numel())}


def add_costs(record: dict, progress: EpochProgress, scoring: dict, bn_adapt: dict | None, rolled_back: dict,
              energy: dict, lr_end: float) -> None:
    """FLOPs, samples, time and joules of the epoch into `record` (which holds the updater's fields)."""
    record.update({"flops_forward": progress.flops_f, "flops_backward": progress.flops_b,
                   "flops_scoring": scoring["flops"], "scoring_samples": scoring["samples"]})
    if bn_adapt is not None:         # forward-only, charged to the first record
        record.update(bn_adapt)
        record["forward_samples"] += bn_adapt["bn_adapt_samples"]
        # Like an updater's one-off calibration pass (the SEL guilt threshold): training compute.
        record["flops_calibration"] = (record.get("flops_calibration") or 0) + bn_adapt["flops_bn_adapt"]
    # Steps a rollback threw away were computed all the same: their cost stays in the totals.
    record.update({f"rolled_back_{k}": v for k, v in rolled_back.items()})
    # Planning's trials are the first epoch's training compute, as planning's time and joules are its.
    if progress.flops_plan:
        record["memory_plan_trial_flops"] = progress.flops_plan
    record["flops_train"] = progress.flops_f + progress.flops_b + progress.flops_penalty + scoring["flops"] + \
        (record.get("flops_calibration") or 0) + rolled_back["flops"] + progress.flops_plan
    wall = progress.wall_s + rolled_back["s"]
    if energy.get("energy_j") is not None:
        energy["energy_j"] += rolled_back["j"]
    n_trained = progress.n_trained
    stepping = wall - progress.plan_s       # a rate of training: planning before the first step is not in it
    record.update({"wall_s": wall, "samples_per_s": n_trained / stepping if stepping > 0 else None, "lr_end": lr_end})
    record.update(energy)


def add_candidate_evaluation(record: dict, candidate_eval: dict | None) -> None:
    """The re-estimated model's validation before training (a keep-best candidate) is evaluation
    cost of this record."""
    for key, value in (candidate_eval or {}).items():
        record[key] = (record.get(key) or 0) + (value or 0)


def closing_fields(progress: EpochProgress, class_names: list[str], nonfinite_events: int,
                   stop_reason: str | None) -> dict:
    out = {}
    for name, e in zip(class_names, progress.emb.values()):
        out[f"E_{name}"] = e
        out[f"C_{name}"] = EmbarrassmentMeter.confidence(e)
    out.update({k: v for k, v in progress.plan.info.items() if k != "stage"})
    out.update({"peak_rss_mb": peak_rss_mb(), "throttled_s": progress.throttled,
                "thermal_pauses_capped": progress.thermal_capped, "nonfinite_events": nonfinite_events,
                "single_samples_untrained": progress.singles_dropped, "optimizer_steps": progress.steps})
    if stop_reason:
        out["stop_reason"] = stop_reason
    return out


def baseline_fields(strategy: str, samples_available: int) -> dict:
    """The starting checkpoint's record before its evaluation: nothing trained, nothing spent."""
    return {"epoch": WARMUP_EPOCH, "phase": "baseline", "stage": None, "strategy": strategy,
            "samples_available": samples_available, "forward_samples": 0, "backward_samples": 0,
            "activation": 0.0, "train_loss": None, "train_acc": None, "flops_forward": 0,
            "flops_backward": 0, "flops_scoring": 0, "flops_train": 0, "wall_s": 0.0, "energy_j": None}


def bn_adapt_fields(strategy: str, samples_available: int, bn_adapt: dict, wall_s: float, energy: dict) -> dict:
    """`--epochs 0 --bn-adapt N`: the re-estimation alone as epoch 0, before its evaluation."""
    return {"epoch": 0, "phase": "bn_adapt", "stage": None, "strategy": strategy,
            "samples_available": samples_available, "forward_samples": bn_adapt["bn_adapt_samples"],
            "backward_samples": 0, "activation": 0.0, "train_loss": None, "train_acc": None,
            "flops_forward": bn_adapt["flops_bn_adapt"], "flops_backward": 0, "flops_scoring": 0,
            "flops_train": bn_adapt["flops_bn_adapt"], "wall_s": wall_s, **bn_adapt, **energy}


def lever_fields(progress: EpochProgress, replay: bool, penalty: bool) -> dict:
    """Levers against forgetting that ran this epoch (absent when off, so other records stay as they were)."""
    out = {}
    if replay:
        out["replay_samples"] = progress.replay_samples
    if penalty:
        out["flops_penalty"] = progress.flops_penalty
    return out


EVALUATION_COST = ("flops_eval", "eval_wall_s", "eval_energy_j", "val_samples_evaluated", "test_samples_evaluated",
                   "anchor_samples_evaluated", "flops_anchor")


def evaluation_cost(record: dict, more: dict | None = None) -> dict:
    """The evaluation cost fields of `record`, plus `more`'s (None joules stay unmeasured)."""
    out = {}
    for key in EVALUATION_COST:
        values = [v for v in (record.get(key), (more or {}).get(key)) if v is not None]
        if values:
            out[key] = sum(values)
    return out


def add_reset(baseline: dict, reset: dict, cost: dict) -> None:
    """`--reset-forgetting`: the decision in the baseline record, and what deciding cost beyond the
    baseline's own evaluation (the start's evaluation when the run was reset, the source's anchor
    pass when the card did not state its accuracy) added to its evaluation cost."""
    baseline["reset"] = reset
    for key, value in cost.items():
        baseline[key] = (baseline.get(key) or 0) + value


def bn_fields(trainer) -> dict:
    """The statistics lever as this trainer runs it (a memory plan's frozen statistics; ORT: the
    artifacts' mode), for every record: the momentum a step moves them at, and a micro-batch's where a
    plan trains them on micro-batches (engine/loop/step_memory.py)."""
    mode = bn_stats.mode_of(trainer.backend.bn_mode, trainer.config.bn_conditions)
    micro = getattr(trainer, "bn_micro_momentum", None)
    if micro is not None and mode != bn_stats.FROZEN:
        return {**bn_stats.fields(mode, trainer.bn_step_momentum), "bn_momentum_micro_batch": round(micro, 6)}
    return bn_stats.fields(mode, bn_stats.momentum_of(trainer.model, mode, trainer.config.bn_momentum))
