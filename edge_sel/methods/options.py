"""Method options of `edge-sel finetune`. Their values travel in TrainConfig.method (a dict), so
the engine stays unaware of any one method's knobs. Each method family keeps its own section."""

from __future__ import annotations

import click

COMMON = [
    click.option("--gate", default=None, help="Filter any strategy's plan before compute (e.g. sundew)."),
    click.option("--preset", default=None, help="Named configuration reproducing a published recipe."),
    click.option("--target-activation", type=float, default=None,
                 help="Share of available samples to compute per epoch (gating strategies)."),
]

# --- sel ---
SEL = []

# --- gating ---
GATING = []

METHOD_OPTIONS = COMMON + SEL + GATING


def method_options(fn):
    for opt in reversed(METHOD_OPTIONS):
        fn = opt(fn)
    return fn


def method_option_names() -> list[str]:
    names = []
    for opt in METHOD_OPTIONS:
        # click.option returns a decorator; apply it to a dummy to read the parameter's name.
        def dummy():
            pass
        opt(dummy)
        names.append(dummy.__click_params__[0].name)
    return names
