"""Named configurations that reproduce a published recipe exactly (for the reference benchmark).
A preset may set the strategy, updater, optimizer and method options; explicit CLI values that
differ from the defaults are kept and noted."""

from __future__ import annotations

from edge_sel.config import TrainConfig
from edge_sel.errors import InputError

# name -> function(cfg) that edits cfg in place. Method modules add theirs.
PRESETS: dict = {}
# strategy -> updater used when --sparsity is not given (None); otherwise "none".
DEFAULT_SPARSITY: dict = {}


def apply_preset(cfg: TrainConfig) -> TrainConfig:
    name = cfg.method.get("preset")
    if name:
        if name not in PRESETS:
            raise InputError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS) or '(none)'}")
        PRESETS[name](cfg)
    if cfg.sparsity is None:   # not chosen by the user or the preset: the strategy's default
        cfg.sparsity = DEFAULT_SPARSITY.get(cfg.strategy, "none")
    return cfg
