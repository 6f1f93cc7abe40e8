"""Named configurations that reproduce a published recipe exactly (for the reference benchmark),
all of them here: the SEL seed's (sel-95, warmup-sel, sel-v3), the AST seed's (ast-prod, ast-two)
and the adaptation recipe (adapt). A preset may set the strategy, updater, optimizer and method
options; an option the user typed is kept (noted where the preset would have changed it), and a
strategy the recipe cannot run is refused."""

from __future__ import annotations

import dataclasses

from edge_sel.config import DEVICE_VAL_SHARE, TrainConfig
from edge_sel.errors import InputError
from edge_sel.methods.select.ast_seed import SEED_PROFILES
from edge_sel.methods.select.stages import DEFAULT_STAGES, format_stages, parse_stages

# strategy -> updater used when --sparsity is not given (None); otherwise "none".
DEFAULT_SPARSITY: dict = {}


def default_lr(optimizer: str) -> float:
    return 0.05 if optimizer == "sgd" else 1e-3   # the CLI's default for each optimizer


def typed(cfg: TrainConfig, field: str) -> bool:
    """True when the user chose `field` (typed it, or, without that record, set it off its default)."""
    if cfg.explicit is not None:
        return field in cfg.explicit
    return getattr(cfg, field) != getattr(TrainConfig(), field)


def needs_strategy(cfg: TrainConfig, name: str, strategy: str) -> None:
    """A recipe that is a strategy runs it: another strategy the user typed (dense included) is
    refused rather than replaced."""
    if cfg.strategy != strategy and (cfg.strategy != "dense" or typed(cfg, "strategy")):
        raise InputError(f"--preset {name}: needs --strategy {strategy}, got {cfg.strategy!r}")
    cfg.strategy = strategy


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
    if cfg.sparsity is None:   # not chosen by the user or the preset: a memory budget's, the run's own, or the strategy's
        plain = cfg.strategy == "dense" and not name and cfg.backend == "torch"
        cfg.sparsity = ("budget" if cfg.memory_budget_mb is not None else "auto" if plain
                        else DEFAULT_SPARSITY.get(cfg.strategy, "none"))
    return cfg


# -- the SEL seed ----------------------------------------------------------------------------------
def _method(cfg: TrainConfig, **values) -> None:
    for key, value in values.items():
        if cfg.method.get(key) is None:
            cfg.method[key] = value


def _seed_recipe(cfg: TrainConfig, prefer, name: str, percentile: float, decay: float) -> None:
    """The seed's SEL: untrained-model sorting and calibration, gates printed but not enforced,
    the guilt mask with Adam, lr = 1e-3 * (1 + 2 * batch loss), batch 64, cap 2000 per class."""
    needs_strategy(cfg, name, "sel")
    if cfg.sparsity is None:
        cfg.sparsity = "mask"
    for field, value in (("optimizer", "adam"), ("lr", 1e-3), ("schedule", "constant"), ("weight_decay", 0.0),
                         ("batch_size", 64)):
        prefer(field, value)
    seed_table = format_stages([dataclasses.replace(s, cap=2000) for s in parse_stages(DEFAULT_STAGES)])
    _method(cfg, difficulty="cold", guilt_model="cold", stage_gates=False, lr_loss_scale=2.0,
            guilt_percentile=percentile, guilt_decay=decay, guilt_samples=128, stages=seed_table)


def preset_sel95(cfg: TrainConfig, prefer) -> None:
    _seed_recipe(cfg, prefer, "sel-95", 40.0, 0.3)


def preset_warmup_sel(cfg: TrainConfig, prefer) -> None:
    """sel-95 after 5 dense epochs on the 10,000 easiest samples (scaled down on smaller sets)."""
    _seed_recipe(cfg, prefer, "warmup-sel", 40.0, 0.3)
    _method(cfg, easy_warmup_epochs=5, easy_warmup_size=10_000)


def preset_sel_v3(cfg: TrainConfig, prefer) -> None:
    _seed_recipe(cfg, prefer, "sel-v3", 20.0, 0.4)


# -- the AST seed ----------------------------------------------------------------------------------
def _ast_preset(name: str, training: dict):
    def apply(cfg: TrainConfig, prefer) -> None:
        needs_strategy(cfg, name, "sundew")
        cfg.method["sundew_profile"] = name
        if cfg.method.get("target_activation") is None:
            cfg.method["target_activation"] = SEED_PROFILES[name]["target"]
        for field, value in training.items():
            prefer(field, value)
    apply.__doc__ = f"The AST seed's {name} recipe for the fine-tune (AST) phase."
    return apply


# AST phase of each script: PROD keeps SGD (lr 0.005, cosine, wd 1e-4, no label smoothing);
# TWO switches to AdamW (lr 1e-3, wd 1e-4) with label smoothing 0.1. Gradient clipping is not reproduced.
preset_ast_prod = _ast_preset("ast-prod", {"optimizer": "sgd", "lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4,
                                           "schedule": "cosine", "label_smoothing": 0.0})
preset_ast_two = _ast_preset("ast-two", {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
                                         "schedule": "cosine", "label_smoothing": 0.1})


# -- adaptation ------------------------------------------------------------------------------------
def preset_adapt(cfg, prefer) -> None:
    """The adaptation recipe, cheapest lever first: BatchNorm statistics from 500 unlabelled local
    images, then fine-tuning of a random 20% of the samples per epoch in which only the blocks with a
    large gradient-to-weight ratio learn, each at its own rate; validation on as many samples as cost
    at most a fifth of the run's compute. Options the user gave win; with BatchNorm statistics kept
    per condition (--bn-conditions) the bank re-estimates every condition itself, so the recipe
    re-estimates no single set."""
    if not typed(cfg, "bn_adapt") and cfg.bn_adapt == 0 and not cfg.bn_conditions:
        cfg.bn_adapt = 500
    if typed(cfg, "strategy"):
        if cfg.strategy != "random":
            cfg.method.setdefault("preset_notes", []).append(f"kept strategy={cfg.strategy} (preset: random)")
    elif cfg.strategy == "dense":
        cfg.strategy = "random"
    if cfg.strategy in ("random", "sundew") and cfg.method.get("target_activation") is None:
        cfg.method["target_activation"] = 0.2
    if cfg.sparsity is None:
        cfg.sparsity = "rgn"
    if not typed(cfg, "val_subset") and cfg.val_subset == 0 and not cfg.val_share:
        cfg.val_share = DEVICE_VAL_SHARE


# name -> function(cfg, prefer) that edits cfg in place.
PRESETS: dict = {"sel-95": preset_sel95, "warmup-sel": preset_warmup_sel, "sel-v3": preset_sel_v3,
                 "ast-prod": preset_ast_prod, "ast-two": preset_ast_two, "adapt": preset_adapt}
