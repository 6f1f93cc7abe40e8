"""The BatchNorm statistics lever (`--bn-stats`): what a run does with the running statistics, apart
from what trains (the affine scales and shifts train or not as the updater says).

- frozen: every BatchNorm layer normalises with its running statistics while training and leaves
  them unchanged (running_mean, running_var, num_batches_tracked), as TinyTL's FT-Last and
  FT-Norm+Last run;
- reestimate: training batches normalise with their own statistics and the running ones move
  towards them at the stated momentum (`--bn-momentum`; torch's 0.1 unless given);
- per-condition: a bank of statistics per condition (engine/evaluation/bn_bank.py), each batch
  normalised with those of its nearest condition; training moves the running statistics as
  reestimate does and every evaluation re-estimates each condition on its kept images.

`--bn-mode eval|train` and `--bn-conditions K` are the older names of the same choice: eval is
frozen, train is reestimate, K >= 2 is per-condition. A run states the mode it ran in config.json,
the checkpoint card, summary.json and every record (`bn_stats`, `bn_momentum`)."""

from __future__ import annotations

from torch import nn

from edge_sel.errors import InputError

FROZEN, REESTIMATE, PER_CONDITION = "frozen", "reestimate", "per-condition"
BN_STATS = (FROZEN, REESTIMATE, PER_CONDITION)
DEFAULT_MOMENTUM = 0.1          # torch's own, every model of the registry is built with it
# Conditions a per-condition run keeps when --bn-conditions does not say (a night's default too).
DEFAULT_CONDITIONS = 4


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def mode_of(bn_mode: str | None, bn_conditions: int | None) -> str:
    """The statistics mode the older options name (bn_mode None: the training default, reestimate)."""
    if bn_conditions:
        return PER_CONDITION
    return FROZEN if bn_mode == "eval" else REESTIMATE


def resolve(cfg) -> str:
    """Apply `cfg.bn_stats` onto the options the loop reads (bn_mode, bn_conditions), refusing a
    contradiction in one line; without it, the older options decide. Returns the mode in effect.
    Applying it again changes nothing."""
    chosen = cfg.bn_stats
    if chosen is None:
        return mode_of(cfg.bn_mode, cfg.bn_conditions)
    if chosen not in BN_STATS:
        raise InputError(f"--bn-stats must be one of {', '.join(BN_STATS)}, got {chosen!r}")
    implied = {FROZEN: "eval", REESTIMATE: "train"}.get(chosen)
    if implied and cfg.bn_mode not in (None, implied):
        raise InputError(f"--bn-stats {chosen} with --bn-mode {cfg.bn_mode}: they contradict; give one")
    if chosen != PER_CONDITION and cfg.bn_conditions:
        raise InputError(f"--bn-stats {chosen} with --bn-conditions {cfg.bn_conditions}: conditions keep "
                         "statistics per condition; give --bn-stats per-condition or drop --bn-conditions")
    if chosen == FROZEN and cfg.bn_adapt:
        raise InputError(f"--bn-stats frozen with --bn-adapt {cfg.bn_adapt}: re-estimating first moves the "
                         "statistics; give --bn-stats reestimate (with --bn-mode eval to freeze them after)")
    if implied:
        cfg.bn_mode = implied
    elif not cfg.bn_conditions:
        cfg.bn_conditions = DEFAULT_CONDITIONS
    return chosen


def momentum_of(model: nn.Module, mode: str, momentum: float | None) -> float | None:
    """The momentum the running statistics move at: None where they do not move (frozen, or no
    BatchNorm); else `momentum`, or the model's own where not given (None: cumulative average)."""
    layers = batchnorm_layers(model)
    if mode == FROZEN or not layers:
        return None
    return momentum if momentum is not None else layers[0].momentum


def fields(mode: str, momentum: float | None) -> dict:
    """What a record, card or summary states of the lever."""
    return {"bn_stats": mode, "bn_momentum": None if mode == FROZEN else momentum}
