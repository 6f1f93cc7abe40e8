"""Method options of `edge-sel finetune`. Their values travel in TrainConfig.method (a dict), so
the engine stays unaware of any one method's knobs. Each method family keeps its own section."""

from __future__ import annotations

import click

from edge_sel.methods.presets import PRESETS
from edge_sel.methods.registry import GATES


class OptionSpec:
    """A click option kept as its declarations and attributes: applied like `click.option(...)`,
    and readable by a command that lists its options under headings in --help."""

    def __init__(self, decls: tuple[str, ...], attrs: dict):
        self.decls, self.attrs = decls, attrs
        self.flag = next(d.split("/")[0] for d in decls if d.startswith("--"))
        self.name = click.Option(decls, **attrs).name

    def __call__(self, fn):
        return click.option(*self.decls, **self.attrs)(fn)


def option(*decls: str, **attrs) -> OptionSpec:
    return OptionSpec(decls, attrs)


class RegistryChoice(click.Choice):
    """A choice listing a registry's names as they are when the command runs (a method registered
    later, e.g. by a plugin or a test, is a valid choice too)."""

    def __init__(self, registry: dict, exclude: tuple = ()):
        self.registry, self.exclude = registry, exclude
        super().__init__(list(registry))

    @property
    def choices(self):
        return tuple(k for k in self.registry if k not in self.exclude)

    @choices.setter
    def choices(self, value):
        pass


COMMON = [
    option("--gate", type=RegistryChoice(GATES, exclude=("all",)), default=None,
                 help="Filter any strategy's plan before compute (e.g. sundew)."),
    option("--preset", type=RegistryChoice(PRESETS), default=None,
                 help="Named configuration reproducing a published recipe."),
    option("--target-activation", type=float, default=None,
                 help="Share of available samples to compute per epoch (gating strategies)."),
]

# --- sel ---
# Defaults are None so presets can tell "not given"; edge_sel/methods/sel.py fills the defaults.
SEL = [
    option("--difficulty", type=click.Choice(["warmup", "cold", "random"]), default=None,
                 help="What sorts each class pool easy-to-hard: warmup (the checkpoint's loss) | cold "
                      "(an untrained model, the seed) | random (control). [default: warmup]"),
    option("--stages", default=None,
                 help="Stage table: START-END[:THRESHOLD[:EPOCHS[:CAP]]],... in percent of each class pool, "
                      "or a .json/.toml file. [default: the seed's five stages, 10 epochs each]"),
    option("--stage-gates/--no-stage-gates", default=None,
                 help="Enforce stage thresholds on validation accuracy. [default: enforced]"),
    option("--stage-patience", type=int, default=None,
                 help="Extra epochs a stage below its threshold may take before advancing. [default: 2]"),
    option("--class-focus/--no-class-focus", default=None,
                 help="Share each epoch's samples between classes by their embarrassment E_c (sel, dense)."),
    option("--class-focus-floor", type=float, default=None,
                 help="Least share of the epoch per class with --class-focus. [default: 0.5 / classes]"),
    option("--lr-loss-scale", type=float, default=None,
                 help="lr x (1 + K x previous batch loss), the seed's K = 2. [default: 0, off]"),
    option("--easy-warmup-epochs", type=int, default=None,
                 help="Dense epochs on the easiest samples before the stages (warmup-sel: 5). [default: 0]"),
    option("--easy-warmup-size", type=int, default=None,
                 help="Samples in the easy warmup, split over classes, at most 20% of each class. "
                      "[default: 10000]"),
    option("--guilt-percentile", type=float, default=None,
                 help="Guilt threshold g0 = this percentile of |grad| (--sparsity mask). [default: 40]"),
    option("--guilt-decay", type=float, default=None,
                 help="Per stage g_s = g0 x (1 - decay x s / stages). [default: 0.3]"),
    option("--guilt-samples", type=int, default=None,
                 help="Training samples in the calibration batch for g0. [default: 128]"),
    option("--guilt-model", type=click.Choice(["warmup", "cold"]), default=None,
                 help="Calibrate g0 on: warmup (the checkpoint) | cold (an untrained model). [default: warmup]"),
    option("--probe-every", type=int, default=None,
                 help="Steps between dense probe steps that pick frozen blocks (--sparsity layers). [default: 50]"),
    option("--layer-sparsity", type=float, default=None,
                 help="Most share of parameters frozen between probes (--sparsity layers). [default: 0.5]"),
    option("--blocks", default=None,
                 help="--sparsity layers|rgn: the blocks to freeze or train, as comma-separated module names "
                      "(input to output) [default: the model's blocks() or the discovery rule of docs/models.md]."),
    option("--last-k", type=int, default=None,
                 help="--sparsity last-k: how many of the model's last blocks train. [default: 1]"),
    option("--rgn-floor", type=float, default=None,
                 help="--sparsity rgn: blocks whose gradient-to-weight ratio is below this share of the "
                      "largest are frozen; the others learn at lr x their share. [default: 0.3]"),
]

# --- gating ---
# Defaults are None so presets can tell "not given"; methods/select/gating_config.py fills them.
GATING = [
    option("--significance", type=click.Choice(["loss-entropy", "dih", "learnability"]), default=None,
                 help="Sundew: what makes a sample worth computing, from its last visit: 0.7 loss + 0.3 "
                      "entropy, its DIH moving average, or the loss unless the sample looks mislabelled "
                      "(confidently predicted as another class). [default: loss-entropy]"),
    option("--unseen", type=click.Choice(["first", "neutral"]), default=None,
                 help="Sundew: never-trained samples score highest (first), or the mean score of the "
                      "seen candidates (neutral). [default: first]"),
    option("--gate-window", type=int, default=None,
                 help="Sundew: batches of candidates per controller update. [default: 1]"),
    option("--gate-temperature", type=float, default=None,
                 help="Sundew: softness of the threshold; 0 is a hard threshold. [default: 0.05]"),
    option("--min-activation", type=float, default=None,
                 help="Sundew: least share kept per window (most significant first; with --novelty, one at a "
                      "time against what is kept), never more than the target's share. [default: 0.05]"),
    option("--unbiased/--no-unbiased", default=None,
                 help="Sundew: keep low scorers at random too and weight losses by 1/keep-probability."),
    option("--keep-floor", type=float, default=None,
                 help="Sundew --unbiased: least keep-probability of any sample. [default: 0.1]"),
    option("--novelty", type=float, default=None,
                 help="Sundew: weight W of the novelty signal; significance x ((1 - W) + W x novelty), "
                      "novelty = how unlike the recently kept frames a candidate is (cheap input "
                      "fingerprint, counted). [default: 0, off]"),
    option("--novelty-memory", type=int, default=None,
                 help="Sundew --novelty: how many recently kept frames the novelty compares with. [default: 512]"),
    option("--novelty-radius", type=float, default=None,
                 help="Sundew --novelty: cosine distance from every remembered frame at which a frame "
                      "counts as fully new. [default: 0.1]"),
    option("--anneal", type=float, default=None,
                 help="Share of final epochs on all samples (sundew, random, infobatch). "
                      "[default: 0.125 infobatch, else 0]"),
    option("--prune-ratio", type=float, default=None,
                 help="InfoBatch: share of below-mean-loss samples skipped per epoch. [default: 0.5]"),
    option("--dih-select", type=click.Choice(["greedy", "rand", "exp", "beta"]), default=None,
                 help="DIHCL: how the subset is chosen from DIH. [default: greedy]"),
    option("--dih-signal", type=click.Choice(["loss", "dloss", "flip"]), default=None,
                 help="DIHCL: instantaneous hardness, normalised by learning rate. [default: loss]"),
    option("--dih-warm", type=int, default=None,
                 help="DIHCL: epochs on all samples before the curriculum (T0). [default: 1]"),
    option("--dih-gamma", type=float, default=None,
                 help="Weight of the newest observation in the DIH moving average. [default: 0.95]"),
    option("--dih-shrink", type=float, default=None,
                 help="DIHCL: subset share multiplier per epoch after the warm start. [default: 0.85]"),
    option("--dih-floor", type=float, default=None,
                 help="DIHCL: smallest subset share. [default: 0.2]"),
    option("--energy-budget-per-epoch", type=float, default=None,
                 help="Joules per training epoch; sets the target activation from measured joules per "
                      "trained sample (sundew, random gates)."),
]

METHOD_OPTIONS = COMMON + SEL + GATING


def method_options(fn):
    for opt in reversed(METHOD_OPTIONS):
        fn = opt(fn)
    return fn


def method_option_names() -> list[str]:
    return [opt.name for opt in METHOD_OPTIONS]


# Which runs read each method option: (strategies, gates, updaters) that use it; an option given to a
# run that would ignore it is a mistake worth one line, not a silent no-op.
_SUNDEW = ({"sundew"}, {"sundew"}, None)
_SEL = ({"sel"}, None, None)
USED_BY = {
    "target_activation": ({"sundew", "random"}, {"sundew", "random"}, None),
    "energy_budget_per_epoch": ({"sundew", "random"}, {"sundew", "random"}, None),
    "difficulty": _SEL, "stages": _SEL, "stage_gates": _SEL, "stage_patience": _SEL, "lr_loss_scale": _SEL,
    "easy_warmup_epochs": _SEL, "easy_warmup_size": _SEL,
    "class_focus": ({"sel", "dense"}, None, None), "class_focus_floor": ({"sel", "dense"}, None, None),
    "guilt_percentile": (None, None, {"mask"}), "guilt_decay": (None, None, {"mask"}),
    "guilt_samples": (None, None, {"mask"}), "guilt_model": (None, None, {"mask"}),
    "probe_every": (None, None, {"layers", "rgn"}), "rgn_floor": (None, None, {"rgn"}), "layer_sparsity": (None, None, {"layers"}),
    "blocks": (None, None, {"layers", "rgn"}), "last_k": (None, None, {"last-k"}),
    "significance": _SUNDEW, "unseen": _SUNDEW, "gate_window": _SUNDEW, "gate_temperature": _SUNDEW,
    "min_activation": _SUNDEW,
    "unbiased": _SUNDEW, "keep_floor": _SUNDEW,
    "novelty": _SUNDEW, "novelty_memory": _SUNDEW, "novelty_radius": _SUNDEW,
    "anneal": ({"sundew", "random", "infobatch"}, {"sundew", "random", "infobatch"}, None),
    "prune_ratio": ({"infobatch"}, {"infobatch"}, None),
    "dih_select": ({"dihcl"}, {"dihcl"}, None), "dih_signal": ({"dihcl"}, {"dihcl"}, None),
    "dih_warm": ({"dihcl"}, {"dihcl"}, None), "dih_shrink": ({"dihcl"}, {"dihcl"}, None),
    "dih_floor": ({"dihcl"}, {"dihcl"}, None), "dih_gamma": ({"dihcl", "sundew"}, {"dihcl", "sundew"}, None),
}


def check_options_used(strategy: str, gate: str | None, sparsity: str, method: dict) -> None:
    """Raise InputError naming the first method option that this run would ignore, and what uses it."""
    from edge_sel.errors import InputError
    for name, (strategies, gates, updaters) in USED_BY.items():
        if method.get(name) is None:
            continue
        if (strategies and strategy in strategies) or (gates and gate in gates) or (updaters and sparsity in updaters):
            continue
        users = [f"--strategy {'|'.join(sorted(strategies))}" if strategies else "",
                 f"--gate {'|'.join(sorted(gates))}" if gates else "",
                 f"--sparsity {'|'.join(sorted(updaters))}" if updaters else ""]
        run = f"--strategy {strategy}" + (f" --gate {gate}" if gate else "") + f" --sparsity {sparsity}"
        raise InputError(f"--{name.replace('_', '-')}: not used by this run ({run}); it applies to "
                         f"{' or '.join(u for u in users if u)}")
