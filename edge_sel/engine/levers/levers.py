"""The levers against forgetting of a fine-tune: which ones a run turned on, the one-line refusals
when one cannot apply, and what they build from the checkpoint's source memory (the objective's
Fisher penalty, anchor replay, the reset decision). The loop (engine/loop/trainer.py) only calls them."""

from __future__ import annotations

from pathlib import Path

from edge_sel.config import TrainConfig
from edge_sel.engine.levers.anchors import Memory, require_memory
from edge_sel.engine.levers.replay import AnchorReplay
from edge_sel.errors import InputError
from edge_sel.methods.objective import FisherPenalty, Objective

# (option, config field): a lever is on when its field is set and not zero.
LEVERS = (("--ewc", "ewc"), ("--replay", "replay"), ("--bn-anchor-share", "bn_anchor_share"),
          ("--reset-forgetting", "reset_forgetting"), ("--bn-conditions", "bn_conditions"))

# Updaters a lever cannot work with, and why (one line each).
NOT_WITH_UPDATER = {
    ("--ewc", "lottery"): "the lottery mask holds pruned entries at zero while the penalty pulls them toward the "
                          "source's non-zero values",
    ("--reset-forgetting", "lottery"): "a reset to the dense source weights would undo the pruned ticket "
                                       "the run retrains",
}


def levers_on(cfg: TrainConfig) -> list[str]:
    return [flag for flag, name in LEVERS if getattr(cfg, name) not in (None, 0, 0.0)]


def check_lever_options(cfg: TrainConfig) -> None:
    """Refuse, with one line naming the option, a lever that cannot apply with the run's other
    options (checked before any data or checkpoint is read)."""
    on = levers_on(cfg)
    for flag in on:
        if cfg.backend != "torch":
            raise InputError(f"{flag}: needs --backend torch (ORT artifacts fix the loss, the batch and the "
                             f"weights they train)")
        reason = NOT_WITH_UPDATER.get((flag, cfg.sparsity))
        if reason:
            raise InputError(f"{flag}: not with --sparsity {cfg.sparsity}: {reason}")
    if "--bn-anchor-share" in on and not cfg.bn_adapt:
        raise InputError("--bn-anchor-share: needs --bn-adapt N (the share is of the N re-estimation images)")


def check_levers_memory(cfg: TrainConfig, memory: Memory | None, checkpoint: Path) -> None:
    """Every lever turned on needs the checkpoint's source memory."""
    for flag in levers_on(cfg):
        require_memory(memory, flag, checkpoint)


def make_objective(cfg: TrainConfig, model, memory: Memory | None) -> Objective:
    """Cross-entropy with the run's label smoothing, plus the Fisher penalty under `--ewc`."""
    penalties = []
    if cfg.ewc:
        memory = require_memory(memory, "--ewc")      # finetune and resume checked it, naming the file
        # One SGD step at the base rate must not carry an entry past the source weight.
        penalties.append(FisherPenalty(model, memory.fisher, memory.source, cfg.ewc, max_weight=1 / cfg.lr))
    return Objective(cfg.label_smoothing, penalties)


def forgot_too_much(start_acc: float, source_acc: float, allowed_points: float) -> bool:
    """RDumb's rule: reset when the start is more than `allowed_points` below the source (accuracies
    as fractions, the allowance in percentage points)."""
    return 100 * (source_acc - start_acc) > allowed_points


def make_replay(cfg: TrainConfig, memory: Memory | None, device, mean, std, memory_format):
    """Anchor replay under `--replay` (None without it)."""
    if not cfg.replay:
        return None
    memory = require_memory(memory, "--replay")
    return AnchorReplay(memory.replay.to(device), cfg.replay, cfg.batch_size, cfg.seed, mean, std, cfg.augment,
                        memory_format)
