"""`--profile` on a command: the profile's values become the defaults of the options the user did
not give. An option given on the command line always wins; so does a `--preset` for the recipe
(batch size, strategy, target activation, sparsity), since a preset reproduces a published run.
"""

from __future__ import annotations

import functools

import click
from click.core import ParameterSource

from edge_sel.errors import InputError
from edge_sel.profiles import Profile, load_profile
from edge_sel.threads import torch_threads

# profile field -> (click parameter name, profile value -> option value)
OPTIONS = {
    "device": ("device", str),
    "precision": ("precision", lambda precision: "auto" if precision == "mixed" else precision),
    "batch_size": ("batch_size", int),
    "strategy": ("strategy", str),
    "target_activation": ("target_activation", float),
    "sparsity": ("sparsity", str),
    "meters": ("meters", tuple),
    "watts_per_core": ("watts_per_core", float),
    "budget_j": ("energy_budget", float),
    "budget_per_epoch_j": ("energy_budget_per_epoch", float),
    "max_temp_c": ("max_temp", float),
    "cpu_threads": ("threads", int),
    "memory_budget_mb": ("memory_budget", float),
}
# Settings without a command-line option: handed to the command as extra keyword arguments.
PASSED = {"rails": "rails", "hysteresis_c": "hysteresis"}
RECIPE = {"batch_size", "strategy", "target_activation", "sparsity"}

PROFILE_HELP = ("Device profile: a shipped name (edge-sel profiles list), auto (detect this machine) or a "
                ".toml file. It supplies defaults; options given here win.")


def given(ctx: click.Context, name: str) -> bool:
    """True when the user set the option (command line or environment), not a default."""
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _flag(ctx: click.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name and param.opts:
            return max(param.opts, key=len)
    return name


def apply_profile(profile: Profile, params: dict, ctx: click.Context) -> tuple[dict, dict]:
    """The command's keyword arguments with the profile's defaults filled in, and a record of
    what was applied, kept (given explicitly) and skipped (a preset's choice)."""
    params = dict(params)
    record = {"name": profile.name, "file": profile.file, "detected": profile.detected,
              "applied": {}, "kept": {}, "skipped": {}}
    preset = params.get("preset") if given(ctx, "preset") else None
    for field, value in profile.settings().items():
        if field in OPTIONS:
            option, convert = OPTIONS[field]
            if option not in params:
                continue                         # this command has no such option
            if preset and field in RECIPE:
                record["skipped"][field] = f"--preset {preset} chooses it"
                continue
            if given(ctx, option):
                record["kept"][field] = f"{_flag(ctx, option)} given"
                continue
            params[option] = convert(value)
        elif field in PASSED:                    # no option of its own
            params[PASSED[field]] = value
        record["applied"][field] = value
    if str(record["applied"].get("device", "")).startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise InputError(f"--profile {profile.name}: train.device is cuda, but this torch "
                             f"({torch.__version__}) sees no CUDA device; pass --device cpu (or auto) to override")
    return params, record


def threads_for_command(count: int | None) -> None:
    """torch's intra-op threads for the running click command (`count`, or what the CPU has free:
    edge_sel/threads.py), restored when it ends."""
    import torch

    from edge_sel.threads import apply_threads
    before = torch.get_num_threads()
    apply_threads(count, source="--threads (or the profile's cpu_threads)")
    click.get_current_context().call_on_close(lambda: torch.set_num_threads(before))


PROFILE_LINE = "edge_sel.profile_line"


def announce_profile() -> None:
    """The line that says which profile the command applied, printed once, when the command has
    checked its options: a command refused for a bad option prints its one-line error alone."""
    line = click.get_current_context().meta.pop(PROFILE_LINE, None)
    if line is not None:
        click.echo(line, err=True)


def profile_option(fn=None, *, default: str | None = None, envvar: str | None = None):
    """Adds `--profile` to a command. The command receives the filled-in options, plus `rails`,
    `hysteresis` (when the profile sets them) and `profile_record` (for the run's records).
    `@profile_option(default="auto", envvar=...)`: a command that applies a profile unless told not to."""
    if fn is None:
        return functools.partial(profile_option, default=default, envvar=envvar)

    @functools.wraps(fn)
    def wrapper(*args, profile=None, **kwargs):
        if profile is None:
            return fn(*args, **kwargs)
        loaded = load_profile(profile)
        ctx = click.get_current_context()
        kwargs, record = apply_profile(loaded, kwargs, ctx)
        if not kwargs.get("quiet"):
            why = f" (auto: {loaded.detected})" if loaded.detected else ""
            settings = ", ".join(f"{k}={v}" for k, v in record["applied"].items())
            ctx.meta[PROFILE_LINE] = f"edge-sel: profile {loaded.name}{why}: {settings or 'no settings'}"
        # A command with --threads sets them itself (the profile filled the option in).
        with torch_threads(None if "threads" in kwargs else loaded.cpu_threads):
            return fn(*args, profile_record=record, **kwargs)
    return click.option("--profile", default=default, envvar=envvar, show_default=default is not None,
                        show_envvar=envvar is not None, metavar="NAME|auto|FILE", help=PROFILE_HELP)(wrapper)
