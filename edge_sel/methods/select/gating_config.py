"""The gating options of `finetune` (TrainConfig.method) with their defaults, checked in one place so
every gate reports a bad value the same way: one line naming the option."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from edge_sel.errors import InputError

SIGNIFICANCES = ("loss-entropy", "dih", "learnability")
UNSEEN_RULES = ("first", "neutral")
DIH_SELECTS = ("greedy", "rand", "exp", "beta")
DIH_SIGNALS = ("loss", "dloss", "flip")


@dataclass
class GatingConfig:
    target_activation: float = 0.3      # share of the candidates a gate computes per epoch
    significance: str = "loss-entropy"  # sundew: what makes a sample worth computing
    unseen: str = "first"               # sundew: never-trained samples first, or at the seen samples' mean
    gate_window: int = 1                # sundew: batches of candidates per controller update
    gate_temperature: float = 0.05      # sundew: softness of the threshold (0: hard threshold)
    min_activation: float = 0.05        # sundew: floor per window (top-significance fallback)
    unbiased: bool = False              # sundew: keep low scorers at random, weight 1/keep-probability
    keep_floor: float = 0.1             # sundew --unbiased: least keep-probability of any sample
    novelty: float = 0.0                # sundew: weight of the novelty signal (0: loss-based only)
    novelty_memory: int = 512           # sundew --novelty: kept frames remembered
    novelty_radius: float = 0.1         # sundew --novelty: cosine distance that counts as fully new
    anneal: float | None = None         # share of final epochs on all candidates (infobatch: 0.125)
    prune_ratio: float = 0.5            # infobatch: share of below-mean samples dropped
    dih_select: str = "greedy"
    dih_signal: str = "loss"
    dih_warm: int = 1                   # dihcl: epochs on all candidates first (T0)
    dih_gamma: float = 0.95             # weight of the newest observation in the DIH moving average
    dih_shrink: float = 0.85            # dihcl: subset share multiplier per epoch after warm start
    dih_floor: float = 0.2              # dihcl: smallest subset share
    energy_budget_per_epoch: float | None = None   # joules per training epoch; drives the target
    sundew_profile: str | None = None   # seed reproduction (ast-prod, ast-two), set by presets

    def anneal_or(self, default: float) -> float:
        return default if self.anneal is None else self.anneal


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _between(value, lo, hi, option, lo_open=False, hi_open=False):
    # Not a finite number first: NaN fails every comparison, so it passed them all and reached the loop.
    bad = (not _finite(value) or value < lo or value > hi or (lo_open and value == lo)
           or (hi_open and value == hi))
    if bad:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise InputError(f"{option} must be in {left}{lo}, {hi}{right}, got {value}")


def gating_config(method: dict) -> GatingConfig:
    """Defaults for options not given (None), then range checks."""
    known = {f.name for f in fields(GatingConfig)}
    given = {k: v for k, v in method.items() if k in known and v is not None}
    cfg = GatingConfig(**given)
    _between(cfg.target_activation, 0, 1, "--target-activation", lo_open=True)
    _between(cfg.gate_temperature, 0, 10, "--gate-temperature")
    _between(cfg.min_activation, 0, 1, "--min-activation")
    _between(cfg.keep_floor, 0, 1, "--keep-floor", lo_open=True)
    _between(cfg.novelty, 0, 1, "--novelty")
    _between(cfg.novelty_radius, 0, 2, "--novelty-radius", lo_open=True)
    if cfg.novelty_memory < 1:
        raise InputError(f"--novelty-memory must be >= 1 frame, got {cfg.novelty_memory}")
    if cfg.anneal is not None:
        _between(cfg.anneal, 0, 1, "--anneal", hi_open=True)
    _between(cfg.prune_ratio, 0, 1, "--prune-ratio", hi_open=True)
    _between(cfg.dih_gamma, 0, 1, "--dih-gamma", lo_open=True)
    _between(cfg.dih_shrink, 0, 1, "--dih-shrink", lo_open=True)
    _between(cfg.dih_floor, 0, 1, "--dih-floor", lo_open=True)
    if cfg.gate_window < 1:
        raise InputError(f"--gate-window must be >= 1 batch, got {cfg.gate_window}")
    if cfg.dih_warm < 0:
        raise InputError(f"--dih-warm must be >= 0 epochs, got {cfg.dih_warm}")
    if cfg.energy_budget_per_epoch is not None and not (_finite(cfg.energy_budget_per_epoch)
                                                        and cfg.energy_budget_per_epoch > 0):
        raise InputError(f"--energy-budget-per-epoch must be > 0 joules, got {cfg.energy_budget_per_epoch}")
    for option, value, choices in (("--significance", cfg.significance, SIGNIFICANCES),
                                   ("--unseen", cfg.unseen, UNSEEN_RULES),
                                   ("--dih-select", cfg.dih_select, DIH_SELECTS),
                                   ("--dih-signal", cfg.dih_signal, DIH_SIGNALS)):
        if value not in choices:
            raise InputError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return cfg


def anneal_start(epochs: int, anneal: float) -> int:
    """First epoch of the full-data tail: the last ceil(anneal * epochs) epochs (none for anneal 0)."""
    tail = math.ceil(anneal * epochs - 1e-9) if anneal > 0 else 0
    return max(0, epochs - tail)
