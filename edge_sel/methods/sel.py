"""SEL wired into the registries: the `sel` strategy, the `mask` and `layers` updaters and class
focus. The seed's published recipes are presets in presets.py.

Option values arrive in TrainConfig.method; an option the user did not give is None there and
takes the default below (presets fill theirs first, so an explicit option always wins).

Defaults of plain `--strategy sel` (ours): pools sorted by the warmup checkpoint's loss, stage
gates enforced on the validation split, and the `layers` updater (structured sparsity that
removes backward compute) unless --sparsity says otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edge_sel.errors import InputError
from edge_sel.methods.presets import DEFAULT_SPARSITY
from edge_sel.methods.registry import STRATEGIES, UPDATERS
from edge_sel.methods.select.curriculum import DIFFICULTIES, SelCurriculum
from edge_sel.methods.select.embarrassment import ClassFocus
from edge_sel.methods.select.stages import DEFAULT_STAGES, parse_stages
from edge_sel.methods.update.sparse import GuiltMask, LayerFreeze, parse_block_names


@dataclass
class SelSettings:
    difficulty: str = "warmup"
    stages: str = DEFAULT_STAGES
    stage_gates: bool = True
    stage_patience: int = 2
    class_focus: bool = False
    class_focus_floor: float | None = None     # share per class; None: 0.5 / num_classes
    lr_loss_scale: float = 0.0                 # lr *= 1 + k * previous batch loss (seed: k = 2)
    easy_warmup_epochs: int = 0                # dense epochs on the easiest samples first
    easy_warmup_size: int = 10_000
    guilt_percentile: float = 40.0
    guilt_decay: float = 0.3
    guilt_samples: int = 128
    guilt_model: str = "warmup"
    probe_every: int = 50
    layer_sparsity: float = 0.5


def settings(method: dict) -> SelSettings:
    """Defaults for every option left as None, then checks that name the option at fault."""
    given = {f.name: method[f.name] for f in dataclasses.fields(SelSettings) if method.get(f.name) is not None}
    s = SelSettings(**given)
    checks = [
        (s.difficulty in DIFFICULTIES, "--difficulty", f"must be one of {', '.join(DIFFICULTIES)}"),
        (s.stage_patience >= 0, "--stage-patience", "must be >= 0"),
        (s.class_focus_floor is None or 0 <= s.class_focus_floor <= 1, "--class-focus-floor",
         "must be a share in [0, 1]"),
        (s.lr_loss_scale >= 0, "--lr-loss-scale", "must be >= 0"),
        (s.easy_warmup_epochs >= 0, "--easy-warmup-epochs", "must be >= 0"),
        (s.easy_warmup_size >= 1, "--easy-warmup-size", "must be >= 1"),
        (0 <= s.guilt_percentile <= 100, "--guilt-percentile", "must be in [0, 100]"),
        (0 <= s.guilt_decay <= 1, "--guilt-decay", "must be in [0, 1]"),
        (s.guilt_samples >= 1, "--guilt-samples", "must be >= 1"),
        (s.guilt_model in ("warmup", "cold"), "--guilt-model", "must be warmup or cold"),
        (s.probe_every >= 1, "--probe-every", "must be >= 1"),
        (0 <= s.layer_sparsity < 1, "--layer-sparsity", "must be a share of parameters in [0, 1)"),
    ]
    for ok, option, message in checks:
        if not ok:
            raise InputError(f"{option} {message}, got {getattr(s, option[2:].replace('-', '_'))!r}")
    return s


def with_class_focus(strategy, s: SelSettings):
    return ClassFocus(strategy, s.class_focus_floor) if s.class_focus else strategy


def make_sel(method: dict):
    s = settings(method)
    curriculum = SelCurriculum(parse_stages(s.stages), s.difficulty, s.stage_gates, s.stage_patience,
                               s.lr_loss_scale, s.easy_warmup_epochs, s.easy_warmup_size)
    return with_class_focus(curriculum, s)


def focusable(factory):
    """A registered strategy that also honours --class-focus (the budget stays the strategy's)."""
    def make(method: dict):
        return with_class_focus(factory(method), settings(method))
    return make


def make_mask(method: dict):
    s = settings(method)
    return GuiltMask(s.guilt_percentile, s.guilt_decay, s.guilt_samples, s.guilt_model)


def make_layers(method: dict):
    s = settings(method)
    return LayerFreeze(s.layer_sparsity, s.probe_every, parse_block_names(method.get("blocks")))


def register() -> None:
    STRATEGIES["sel"] = make_sel
    STRATEGIES["dense"] = focusable(STRATEGIES["dense"])
    UPDATERS["mask"] = make_mask
    UPDATERS["layers"] = make_layers
    DEFAULT_SPARSITY["sel"] = "layers"
