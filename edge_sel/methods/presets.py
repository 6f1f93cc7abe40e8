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


def default_lr(optimizer: str) -> float:
    return 0.05 if optimizer == "sgd" else 1e-3   # the CLI's default for each optimizer


def preference(cfg: TrainConfig):
    """The one rule every preset follows for training options: the preset's value applies unless
    the user chose the option. `chosen` is read before the preset changes anything (the default
    learning rate depends on the optimizer the user had, not the one a preset switches to)."""
    defaults, user_optimizer = TrainConfig(), cfg.optimizer

    def chosen(field: str) -> bool:
        if cfg.explicit is not None:
            return field in cfg.explicit
        default = default_lr(user_optimizer) if field == "lr" else getattr(defaults, field)
        return getattr(cfg, field) != default

    picked = {f: chosen(f) for f in ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs",
                                     "label_smoothing", "batch_size")}

    def prefer(field: str, value) -> None:
        current = getattr(cfg, field)
        if picked[field] and current != value:
            cfg.method.setdefault("preset_notes", []).append(f"kept {field}={current} (preset: {value})")
        else:
            setattr(cfg, field, value)
    return prefer


def apply_preset(cfg: TrainConfig) -> TrainConfig:
    name = cfg.method.get("preset")
    if name:
        if name not in PRESETS:
            raise InputError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS) or '(none)'}")
        if not cfg.method.get("preset_applied"):      # a resumed run's config already holds the recipe
            PRESETS[name](cfg, preference(cfg))
            cfg.method["preset_applied"] = True
    if cfg.sparsity is None:   # not chosen by the user or the preset: the strategy's default
        cfg.sparsity = DEFAULT_SPARSITY.get(cfg.strategy, "none")
    return cfg
