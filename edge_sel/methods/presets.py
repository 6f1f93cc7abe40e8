"""Named configurations that reproduce a published recipe exactly (for the reference benchmark).
A preset may set the strategy, updater, optimizer and method options; explicit CLI values that
differ from the defaults are kept and noted."""

from __future__ import annotations

from edge_sel.config import TrainConfig
from edge_sel.errors import InputError

# name -> function(cfg) that edits cfg in place. Method modules add theirs.
PRESETS: dict = {}


def apply_preset(cfg: TrainConfig) -> TrainConfig:
    name = cfg.method.get("preset")
    if not name:
        return cfg
    if name not in PRESETS:
        raise InputError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS) or '(none)'}")
    PRESETS[name](cfg)
    return cfg
