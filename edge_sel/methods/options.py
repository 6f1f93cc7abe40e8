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
# Defaults are None so presets can tell "not given"; edge_sel/methods/sel.py fills the defaults.
SEL = [
    click.option("--difficulty", default=None,
                 help="What sorts each class pool easy-to-hard: warmup (the checkpoint's loss) | cold "
                      "(an untrained model, the seed) | random (control). [default: warmup]"),
    click.option("--stages", default=None,
                 help="Stage table: START-END[:THRESHOLD[:EPOCHS[:CAP]]],... in percent of each class pool, "
                      "or a .json/.toml file. [default: the seed's five stages, 10 epochs each]"),
    click.option("--stage-gates/--no-stage-gates", default=None,
                 help="Enforce stage thresholds on validation accuracy. [default: enforced]"),
    click.option("--stage-patience", type=int, default=None,
                 help="Extra epochs a stage below its threshold may take before advancing. [default: 2]"),
    click.option("--class-focus/--no-class-focus", default=None,
                 help="Share each epoch's samples between classes by their embarrassment E_c (sel, dense)."),
    click.option("--class-focus-floor", type=float, default=None,
                 help="Least share of the epoch per class with --class-focus. [default: 0.5 / classes]"),
    click.option("--lr-loss-scale", type=float, default=None,
                 help="lr x (1 + K x previous batch loss), the seed's K = 2. [default: 0, off]"),
    click.option("--easy-warmup-epochs", type=int, default=None,
                 help="Dense epochs on the easiest samples before the stages (warmup-sel: 5). [default: 0]"),
    click.option("--easy-warmup-size", type=int, default=None,
                 help="Samples in the easy warmup, split over classes, at most 20% of each class. "
                      "[default: 10000]"),
    click.option("--guilt-percentile", type=float, default=None,
                 help="Guilt threshold g0 = this percentile of |grad| (--sparsity mask). [default: 40]"),
    click.option("--guilt-decay", type=float, default=None,
                 help="Per stage g_s = g0 x (1 - decay x s / stages). [default: 0.3]"),
    click.option("--guilt-samples", type=int, default=None,
                 help="Training samples in the calibration batch for g0. [default: 128]"),
    click.option("--guilt-model", default=None,
                 help="Calibrate g0 on: warmup (the checkpoint) | cold (an untrained model). [default: warmup]"),
    click.option("--probe-every", type=int, default=None,
                 help="Steps between dense probe steps that pick frozen blocks (--sparsity layers). [default: 50]"),
    click.option("--layer-sparsity", type=float, default=None,
                 help="Most share of parameters frozen between probes (--sparsity layers). [default: 0.5]"),
]

# --- gating ---
# Defaults are None so presets can tell "not given"; edge_sel/methods/gating_config.py fills them.
GATING = [
    click.option("--significance", type=click.Choice(["loss-entropy", "dih"]), default=None,
                 help="Sundew: what makes a sample worth computing, from its last visit: 0.7 loss + 0.3 "
                      "entropy, or its DIH moving average. [default: loss-entropy]"),
    click.option("--gate-window", type=int, default=None,
                 help="Sundew: batches of candidates per controller update. [default: 1]"),
    click.option("--gate-temperature", type=float, default=None,
                 help="Sundew: softness of the threshold; 0 is a hard threshold. [default: 0.05]"),
    click.option("--min-activation", type=float, default=None,
                 help="Sundew: least share kept per window (most significant first). [default: 0.05]"),
    click.option("--unbiased/--no-unbiased", default=None,
                 help="Sundew: keep low scorers at random too and weight losses by 1/keep-probability."),
    click.option("--keep-floor", type=float, default=None,
                 help="Sundew --unbiased: least keep-probability of any sample. [default: 0.1]"),
    click.option("--anneal", type=float, default=None,
                 help="Share of final epochs on all samples (sundew, random, infobatch). "
                      "[default: 0.125 infobatch, else 0]"),
    click.option("--prune-ratio", type=float, default=None,
                 help="InfoBatch: share of below-mean-loss samples skipped per epoch. [default: 0.5]"),
    click.option("--dih-select", type=click.Choice(["greedy", "rand", "exp", "beta"]), default=None,
                 help="DIHCL: how the subset is chosen from DIH. [default: greedy]"),
    click.option("--dih-signal", type=click.Choice(["loss", "dloss", "flip"]), default=None,
                 help="DIHCL: instantaneous hardness, normalised by learning rate. [default: loss]"),
    click.option("--dih-warm", type=int, default=None,
                 help="DIHCL: epochs on all samples before the curriculum (T0). [default: 1]"),
    click.option("--dih-gamma", type=float, default=None,
                 help="Weight of the newest observation in the DIH moving average. [default: 0.95]"),
    click.option("--dih-shrink", type=float, default=None,
                 help="DIHCL: subset share multiplier per epoch after the warm start. [default: 0.85]"),
    click.option("--dih-floor", type=float, default=None,
                 help="DIHCL: smallest subset share. [default: 0.2]"),
    click.option("--energy-budget-per-epoch", type=float, default=None,
                 help="Joules per training epoch; sets the target activation from measured joules per "
                      "trained sample (sundew, random gates)."),
]

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
