"""What the run commands' options become: a run's configuration, its data and energy options (for
pretrain, finetune, night and the Python API alike), and which settings and places the user gave."""

from __future__ import annotations

import click

from edge_sel.config import TrainConfig
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.methods.options import method_option_names
from edge_sel.methods.presets import default_lr
from edge_sel.profiles.apply import OPTIONS as PROFILE_OPTIONS
from edge_sel.profiles.apply import given


def build_energy(kw: dict) -> EnergyOptions:
    energy = EnergyOptions(meters=list(kw.pop("meters")), watts_per_core=kw.pop("watts_per_core"),
                           idle_baseline_s=kw.pop("idle_baseline"), budget_j=kw.pop("energy_budget"),
                           max_temp_c=kw.pop("max_temp"), max_pause_s=kw.pop("max_pause"))
    if "rails" in kw:          # from a device profile (--profile); no option of their own
        energy.rails = list(kw.pop("rails"))
    if "hysteresis" in kw:
        energy.hysteresis_c = kw.pop("hysteresis")
    return energy


PRESET_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "label_smoothing",
                 "batch_size")
# What a fine-tune's recipe (--preset adapt) also chooses: typed, the user's choice wins over it.
RECIPE_FIELDS = ("strategy", "sparsity", "bn_adapt", "val_subset", "keep")


def explicit_names(command: str) -> list[str]:
    """The options whose typed value a preset must keep, for `command`."""
    if command in ("finetune", "night"):
        return [*PRESET_FIELDS, *RECIPE_FIELDS, *method_option_names()]
    return list(PRESET_FIELDS)


def given_on_command_line() -> list[str]:
    """Options typed by the user: a preset never overrides them (profile values it may), and only
    they are refused when the run would ignore them (a profile's target activation is not)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    return [name for name in explicit_names(ctx.command.name)
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]


def build_config(kw: dict, **extra) -> TrainConfig:
    lr = kw["lr"] if kw["lr"] is not None else default_lr(kw["optimizer"])
    extra.setdefault("explicit", given_on_command_line())
    return TrainConfig(epochs=kw["epochs"], batch_size=kw["batch_size"], optimizer=kw["optimizer"], lr=lr,
                       momentum=kw["momentum"], weight_decay=kw["weight_decay"], schedule=kw["schedule"],
                       warmup_epochs=kw["warmup_epochs"], label_smoothing=kw["label_smoothing"],
                       augment=not kw["no_augment"], seed=kw["seed"], device=kw["device"],
                       precision=kw["precision"], checkpoint_every=kw["checkpoint_every"],
                       memory_format=kw["memory_format"], eval_batch_size=kw["eval_batch_size"],
                       eval_every=kw["eval_every"] or 0, eval_test=kw["eval_test"], val_subset=kw["val_subset"],
                       sync_every=kw["sync_every"], compile=kw["compile_model"], **extra)


def build_data(kw: dict) -> DataOptions:
    return DataOptions(kw["dataset"], kw["data_dir"], kw["val_fraction"], kw["shard"], kw["subset"],
                       kw["per_class_cap"], kw["split_seed"], kw["image_size"], kw["shift"], kw["shift_seed"],
                       test_subset=kw.get("test_subset"))


# A fine-tune's options that are TrainConfig fields of the same name (the command line's and the
# Python API's: one list, so that neither drops a lever).
FINETUNE_FIELDS = ("strategy", "sparsity", "backend", "bn_mode", "bn_adapt", "keep", "max_forgetting", "ewc", "replay",
                   "bn_anchor_share", "reset_forgetting", "bn_conditions", "bn_condition_images",
                   "bn_condition_radius", "bn_stats", "bn_momentum")
# Options whose config field has another name.
RENAMED_FIELDS = {"memory_budget": "memory_budget_mb", "time_budget": "time_budget_s"}


def build_finetune_config(kw: dict) -> TrainConfig:
    """A fine-tune's configuration from its options (finetune's and a night's: one place, so that
    the two commands cannot drift apart)."""
    chosen = {name: kw.pop(name) for name in FINETUNE_FIELDS}
    chosen.update({field: kw.pop(option, None) for option, field in RENAMED_FIELDS.items()})
    artifacts = kw.pop("artifacts")
    method = {name: kw.pop(name) for name in method_option_names()}
    return build_config(kw, artifacts=str(artifacts) if artifacts else None, method=method, **chosen)


# Options whose TrainConfig field has another name.
FIELD_OF_OPTION = {"no_augment": "augment", "compile_model": "compile"}


def settings_given(profile: dict | None) -> set[str]:
    """The settings the user set: options typed or from the environment, and a profile's."""
    ctx = click.get_current_context()
    names = {p.name for p in ctx.command.params if given(ctx, p.name)}
    names |= {PROFILE_OPTIONS[field][0] for field in (profile or {}).get("applied", {}) if field in PROFILE_OPTIONS}
    return {FIELD_OF_OPTION.get(name, name) for name in names}


def places_said() -> dict:
    """How each of a night's places was set: its option, its environment variable, or under --home
    (by the option or EDGE_SEL_HOME), for errors to name what the user wrote."""
    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params}
    sources = click.core.ParameterSource

    def said(name: str) -> str:
        source = ctx.get_parameter_source(name)
        if source == sources.ENVIRONMENT:
            return params[name].envvar
        if source == sources.COMMANDLINE:
            return params[name].opts[0]
        return f"{said('home')}/{name}" if name != "home" else "--home"
    return {name: said(name) for name in ("runs", "deployed", "warmup")}
