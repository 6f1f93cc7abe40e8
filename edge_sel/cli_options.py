"""The options of pretrain and finetune, and the headings they are listed under in --help.

Options are declared once, as specs (edge_sel.methods.options.option), so a command can take them
from several places (its own, the data and training options it shares with the other command, the
method options) and list each under a heading (click-option-group) without changing its name,
default or behaviour.
"""

from __future__ import annotations

from pathlib import Path

import click
from click_option_group import OptionGroup

from edge_sel.config import (EVAL_TEST, MAX_EPOCHS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, GUARD_TEMP_C, MEMORY_FORMATS, NIGHT_BN_CONDITIONS,
                             OPTIMIZERS, PRECISIONS, SCHEDULES)
from edge_sel.core.bn_stats import BN_STATS
from edge_sel.energy import METER_NAMES
from edge_sel.methods import STRATEGIES
from edge_sel.methods.options import OptionSpec, RegistryChoice, option


class OffOrAtLeast(click.ParamType):
    """A whole number that is 0 (off) or at least `least`: one bank of statistics kept per
    condition needs two conditions at least, the source's and one more."""
    name = "integer"

    def __init__(self, least: int):
        self.least = least

    def convert(self, value, param, ctx):
        number = click.INT.convert(value, param, ctx)
        if number != 0 and number < self.least:
            self.fail(f"{number} is neither 0 (off) nor >= {self.least}", param, ctx)
        return number


def input_norm_option(ctx, param, value):
    """--input-norm checked as it is read: a typo fails before the data loads."""
    from edge_sel.engine.runs.input_norm import parse_input_norm
    from edge_sel.errors import InputError
    try:
        parse_input_norm(value)
    except InputError as e:
        raise click.BadParameter(str(e).partition(": ")[2], ctx, param) from None
    return value


POSITIVE = click.IntRange(min=1)
COUNT = click.IntRange(min=0)

DATA = [
    option("--dataset", default="digits", show_default=True,
           help="digits | cifar10 | synthetic | folder:PATH | pack:PATH"),
    option("--data-dir", type=click.Path(path_type=Path), default=None,
           help="Where the CIFAR-10 archive lives (cifar-10-batches-py)."),
    option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
           help="Stratified share of the training part held out for validation."),
    option("--shard", default=None, help="Use stratified shard K/N of the training part, e.g. 0/2."),
    option("--subset", type=POSITIVE, default=None,
           help="Class-balanced subset of N training samples (more than there are: all of them, with a warning)."),
    option("--test-subset", type=POSITIVE, default=None,
           help="Evaluate on a class-balanced N of the test split (a device's small labelled test set) [default: all]."),
    option("--per-class-cap", type=POSITIVE, default=None, help="At most N training samples per class."),
    option("--split-seed", type=int, default=0, show_default=True,
           help="Seed of the validation split and shards (a fine-tune must use its pretrain's)."),
    option("--image-size", type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), default=None,
           help="Give the model folder images at S x S, each batch resized (the folder is held at its own size; folder datasets only)."),
    option("--shift", default=None,
           help="Shift the local data: corrupt=NAME:SEV; label-noise=RATE[:val]; imbalance=longtail:RATIO; "
                "classes=A,B (items joined by ';'). Records then add clean_test_acc."),
    option("--shift-seed", type=int, default=0, show_default=True,
           help="Seed of which samples a shift hits and how."),
]

TRAIN = [
    option("--epochs", type=click.IntRange(0, MAX_EPOCHS), default=None, help="Epochs to train (required)."),
    option("--batch-size", type=POSITIVE, default=128, show_default=True, help="Training batch size."),
    option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True,
           help="Optimizer (sgd with Nesterov momentum, adam, adamw)."),
    option("--lr", type=float, default=None, help="Base learning rate [0.05 sgd, 1e-3 adam]."),
    option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum."),
    option("--weight-decay", type=float, default=5e-4, show_default=True, help="Weight decay (L2)."),
    option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
           help="Learning-rate schedule over training progress (shared by gated and dense runs)."),
    option("--warmup-epochs", type=float, default=0.0, show_default=True,
           help="Epochs of linear learning-rate warmup."),
    option("--label-smoothing", type=float, default=0.0, show_default=True,
           help="Label smoothing of the cross-entropy loss."),
    option("--no-augment", is_flag=True, help="Disable random crops and flips."),
    option("--seed", type=int, default=0, show_default=True,
           help="Seed of initialisation, data order, augmentation and gating."),
    option("--device", default="auto", show_default=True, help="cpu | cuda | mps | auto"),
    option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
           help="Arithmetic of the training step: auto (CPU: bf16 autocast only where the CPU has bf16 "
                "instructions and a short probe finds it faster, evaluation too only where its accuracy is "
                "unchanged; CUDA: bf16, or fp16 with loss scaling before Ampere), or fp32, bf16, fp16 for every pass."),
    option("--out", type=click.Path(path_type=Path), default=None, help="Run directory to create (required)."),
    option("--checkpoint-every", type=COUNT, default=200, show_default=True,
           help="Steps between full-state checkpoints inside an epoch (0: epoch ends only)."),
    option("--overwrite", is_flag=True, help="Replace an existing --out directory."),
    option("--quiet", is_flag=True, help="No progress bars or summary table."),
]

SPEED = [
    option("--memory-format", type=click.Choice(MEMORY_FORMATS), default="auto", show_default=True,
           help="Activation layout of conv models; auto times both on this device first, where the run trains at "
                "least ten times the probe's samples (else contiguous)."),
    option("--eval-batch-size", type=COUNT, default=0, show_default=True,
           help="Evaluation batch size (0: the fastest of a few, measured on this device)."),
    option("--eval-every", type=POSITIVE, default=None,
           help="Validate every K epochs (the last epoch always). Not given: every epoch, and a fine-tune "
                "that keeps its last epoch (--keep last) validates that one alone."),
    option("--eval-test", type=click.Choice(EVAL_TEST), default="end", show_default=True,
           help="Test set after the last epoch only, or after every validation."),
    option("--val-subset", type=COUNT, default=0, show_default=True,
           help="Validate on N samples of the validation split (0: all of it; not given under a "
                "budget: as many as a fifth of the counted compute affords, at least 300)."),
    option("--sync-every", type=COUNT, default=0, show_default=True,
           help="Steps between host reads of loss sums (0: 1 on CPU, 32 on a GPU)."),
    option("--compile", "compile_model", is_flag=True,
           help="torch.compile the model; compile time is counted in the first epoch."),
    option("--threads", type=click.IntRange(min=1), default=None, envvar="EDGE_SEL_THREADS", show_envvar=True,
           help="torch's CPU threads (ORT uses as many) [default: the CPUs other work leaves free at the start, "
                "at least 1; threads wait passively unless OMP_WAIT_POLICY says otherwise]."),
]

ENERGY = [
    option("--meter", "meters", multiple=True, type=click.Choice(METER_NAMES),
           help="Energy meter to use (repeatable). Default: automatic."),
    option("--watts-per-core", type=click.FloatRange(min=0, min_open=True), default=None,
           help="Watts per busy core for the labelled estimate (no sensor)."),
    option("--idle-baseline", type=click.FloatRange(min=0), default=0.0, show_default=True,
           help="Measure idle power for S seconds first; records then add net-of-idle joules."),
    option("--energy-budget", type=click.FloatRange(min=0, min_open=True), default=None,
           help="Stop cleanly (records and checkpoint written) before the measured total would pass J joules "
                "with one more step and the final evaluation (estimated); with --time-budget, the first to bind "
                "stops the run."),
    option("--max-temp", type=click.FloatRange(*GUARD_TEMP_C), default=None,
           help="Thermal guard: pause between steps above this temperature (C), 30 to 120."),
    option("--max-pause", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
           help="Longest single thermal pause in seconds; then training resumes (a stuck sensor "
                "must not stall the run) and the record counts it in thermal_pauses_capped."),
]

PRETRAIN = [
    option("--model", "model_name", default="edgecnn", show_default=True,
           help="A built-in model (edge-sel models), a factory package.module:callable or path/to/file.py:callable "
                "(called with num_classes=), or torchvision:NAME / timm:NAME where those import."),
    option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
           help="Keyword argument of the model's factory (repeatable), e.g. width_mult=0.5."),
    option("--init-weights", type=click.Path(path_type=Path), default=None,
           help="Starting weights: a .safetensors file or a torch state dict (read with weights_only=True); a "
                "classifier of another shape, or none, is made anew for the data's classes."),
    option("--pretrained", type=click.Choice(["imagenet"]), default=None, metavar="imagenet",
           help="Start from the model's published ImageNet weights (efficientnet_lite0/1/2, from the installed "
                "'pretrained' extra; nothing is downloaded), the classifier made anew for the data's classes."),
    option("--input-norm", default=None, metavar="dataset|imagenet|unit|M1,M2,M3/S1,S2,S3", callback=input_norm_option,
           help="Input normalisation, kept in the card for every later command: the training split's statistics, "
                "ImageNet's, [-1, 1] (mean = std = 0.5), or explicit [default: the weights' with --pretrained, "
                "else dataset]."),
    option("--export-artifacts", is_flag=True, help="Then export model.onnx and ORT training artifacts to OUT/artifacts."),
    option("--anchors-per-class", type=click.IntRange(min=0), default=100, show_default=True,
           help="Ship with the checkpoint up to N training images per class (half replayed by devices, half held "
                "out to measure forgetting), the Fisher information and the source weights (0: none)."),
    option("--fisher-samples", type=click.IntRange(min=0), default=1000, show_default=True,
           help="Training samples the diagonal Fisher information is estimated on."),
    option("--set-gains-steps", type=click.IntRange(min=-1), default=-1, show_default=True,
           envvar="EDGE_SEL_SET_GAINS_STEPS", show_envvar=True,
           help="Ship with the checkpoint what each set a device chooses among (a plain finetune's own choice, "
                "--sparsity budget's) gains from these weights, at each recipe: each set trained N steps of the "
                "training split at --batch-size, at learning rates 0.003, 0.01 and 0.03 with BatchNorm statistics "
                "frozen and re-estimated, held-out images scored at every power of two steps (-1: the steps of two "
                "epochs over as many images as the training split, 16 to 64; 0: none shipped)."),
    option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
           help="Continue the interrupted pretrain in this directory with the options it was started with."),
    option("--recipe", type=click.Choice(["auto", "full", "probe"]), default="auto", show_default=True,
           help="From pretrained weights: probe trains the new head alone for all --epochs (a linear probe, the "
                "backbone and its BatchNorm statistics frozen); full trains everything from the first step; auto: "
                "probe below 10,000 training images, else full (docs/transfer.md)."),
    option("--head-epochs", type=click.IntRange(min=0), default=0, show_default=True,
           help="First train the new classifier alone for N epochs (a linear probe: backbone frozen, BatchNorm "
                "statistics kept), then --epochs of everything."),
    option("--head-lr", type=click.FloatRange(min=0, min_open=True), default=None,
           help="Learning rate of the --head-epochs stage [default: --lr]."),
    option("--head-bn-adapt", type=click.IntRange(min=0), default=0, show_default=True,
           help="Before --head-epochs, re-estimate BatchNorm statistics on N training images, so the head learns "
                "on features normalised with the data's statistics (0: the start's own)."),
    option("--backbone-lr-scale", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
           help="After --head-epochs, train all but the classifier at this fraction of --lr."),
    option("--bn-stats", type=click.Choice(BN_STATS[:2]), default=None,
           help="BatchNorm running statistics while training: frozen (used, never changed) or reestimate (moving "
                "at --bn-momentum) [default: reestimate; a --head-epochs stage keeps them frozen]."),
    option("--bn-momentum", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
           help="Every BatchNorm layer's momentum while training [default: 0.1 from --init-weights or --pretrained, else the "
                "model's own; weights converted from TensorFlow carry 0.01]."),
]

FINETUNE = [
    option("--checkpoint", type=click.Path(path_type=Path), default=None,
           help="Warmup checkpoint directory (required unless --resume)."),
    option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
           help="Continue the interrupted run in this directory with the options it was started with."),
    option("--strategy", type=RegistryChoice(STRATEGIES), default="dense", show_default=True,
           help="Which samples are computed."),
    option("--sparsity", default=None,
           help="Which parameters change: none | mask (guilt threshold on gradients) | layers (frozen blocks between "
                "probes) | bn-affine (BatchNorm scales and shifts and the head) | rgn (blocks by gradient-to-weight "
                "ratio) | lottery (a fixed pruning mask, as bench reference runs it) | classifier | last-k (--last-k K blocks) | "
                "bias-norm (biases, norms and the head) | lite-residual (TinyTL's small branches beside frozen blocks, with "
                "the biases and the head) | budget (what each byte buys, under --memory-budget) | auto (the set, its "
                "BatchNorm statistics and learning rate with the most expected accuracy per joule, from the recipes "
                "the checkpoint ships) [default: budget with --memory-budget; the strategy's (sel: layers); else auto]."),
    option("--memory-budget", type=click.FloatRange(min=0, min_open=True), default=None,
           help="MiB (2^20 bytes) the training step may keep (weights, optimizer state, batch, activations, "
                "gradients; the process itself and the datasets come on top): the step is planned to fit, by "
                "counting (micro-batches, recomputed blocks, and with --sparsity budget, the default then, what "
                "trains); the run's last lines compare what it measured with it. Off by default."),
    option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
           help="Stop cleanly (records and checkpoint written) before the run's wall time (from its start: "
                "probes, planning and evaluations included) would pass S seconds with one more step and the final "
                "evaluation (estimated); with --energy-budget, the first to bind stops the run. --sparsity budget's "
                "plan also chooses what trains among the sets estimated to train within it. Off by default."),
    option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True,
           help="What runs the training step: PyTorch, or ONNX Runtime training artifacts (--artifacts)."),
    option("--artifacts", type=click.Path(path_type=Path), default=None, help="ORT training artifacts (--backend ort)."),
    option("--bn-mode", type=click.Choice(["train", "eval"]), default=None,
           help="BatchNorm while training: train (batch stats) or eval (frozen stats) [default: train; "
                "ort: the artifacts' mode]."),
    option("--bn-stats", type=click.Choice(BN_STATS), default=None,
           help="BatchNorm running statistics while training, apart from what trains: frozen (used, never "
                "changed), reestimate (batch statistics; the running ones move at --bn-momentum) or per-condition "
                "(kept per condition, as --bn-conditions; default 4) [default: --bn-mode's or --bn-conditions' "
                "choice; else reestimate; ort: the artifacts' mode]."),
    option("--bn-momentum", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
           help="Momentum of the running statistics under --bn-stats reestimate or per-condition [default: the "
                "model's own, 0.1 for every model built here]; stated in config.json, the card and every record."),
    option("--bn-adapt", type=COUNT, default=0, show_default=True,
           help="First re-estimate BatchNorm statistics on N unlabelled local training images (forward passes "
                "only; with --epochs 0, the whole adaptation)."),
    option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
           help="Output model: the best by local validation accuracy among the starting checkpoint and "
                "every epoch (a run that does not beat the checkpoint hands it back unchanged), or the last epoch."),
    option("--max-forgetting", type=float, default=3.0, show_default=True,
           help="Guard: a candidate whose accuracy on the checkpoint's held-out anchors is more than P points "
                "below the source model's (and below the starting model's) is not kept or deployed."),
    option("--ewc", type=float, default=0.0, show_default=True,
           help="Weight lambda of the Fisher-weighted penalty pulling the weights toward the source model's (EWC): "
                "(lambda/2) sum F_i (w_i - w*_i)^2 with F divided by its mean, so lambda is in L2-SP units whatever "
                "the model (each entry's weight capped at 1/lr). Useful range 0.1-100 (measured: 1 on digits, "
                "10-100 on CIFAR-10); costs no forward pass, its elementwise FLOPs are counted."),
    option("--replay", type=float, default=0.0, show_default=True,
           help="Adds round(S x batch size) rows from the checkpoint's replay anchors (source images, never the "
                "guard's) to every training step; counted as trained samples and FLOPs."),
    option("--bn-anchor-share", type=float, default=0.0, show_default=True,
           help="Share of the --bn-adapt images taken from the replay anchors, so the statistics keep the source's."),
    option("--reset-forgetting", type=float, default=None,
           help="Before training, reset to the source model when the starting model's guard-anchor accuracy is "
                "more than P points below the source's (RDumb); the check costs one evaluation of the anchors."),
    option("--bn-conditions", type=OffOrAtLeast(2), default=0, show_default=True,
           help="Keep BatchNorm statistics for up to K conditions (the source's included), each batch normalised "
                "with those of the condition its pixel statistics are nearest to; tonight's images join the "
                "nearest condition or become a new one. Every evaluation first re-estimates each condition on its "
                "kept images (counted forward passes). Written with the model as bn_bank.safetensors."),
    option("--bn-condition-images", type=POSITIVE, default=256, show_default=True,
           help="Unlabelled images kept per condition (the source's: the replay anchors)."),
    option("--bn-condition-radius", type=float, default=0.25, show_default=True,
           help="Fingerprint distance within which tonight's images count as a condition already kept "
                "(measured on CIFAR-10: under 0.03 within a condition, 0.9 or more between clean, noise and fog)."),
]

# `edge-sel night`: where the device keeps things, each defaulting to the setting the systemd
# unit's environment file uses (deploy/systemd/finetune.env.example).
HOME = [
    option("--home", type=click.Path(path_type=Path), default="/var/lib/edge-sel", show_default=True,
           envvar="EDGE_SEL_HOME", show_envvar=True,
           help="The device's home: runs/, checkpoints/warmup, checkpoints/deployed, data/."),
    option("--runs", type=click.Path(path_type=Path), default=None, envvar="EDGE_SEL_RUNS", show_envvar=True,
           help="Where the nights' run directories are [default: HOME/runs]."),
    option("--deployed", type=click.Path(path_type=Path), default=None, envvar="EDGE_SEL_DEPLOYED",
           show_envvar=True, help="The model in use: a night starts from it and replaces it only by a run that "
                                  "promote judges better [default: HOME/checkpoints/deployed]."),
    option("--warmup", type=click.Path(path_type=Path), default=None, envvar="EDGE_SEL_CHECKPOINT",
           show_envvar=True, help="The server's warmup checkpoint, the start while nothing is deployed "
                                  "[default: HOME/checkpoints/warmup]."),
]

# A night's run directory is named by the night, and only a run cut off is resumed.
NOT_FOR_A_NIGHT = {"--checkpoint", "--resume", "--out", "--overwrite"}
NIGHT_DEFAULTS = {
    "--dataset": dict(default=None, show_default=False, envvar="EDGE_SEL_DATASET", show_envvar=True,
                      help="Tonight's local data: digits | cifar10 | synthetic | folder:PATH [default: folder:HOME/data]."),
    "--epochs": dict(default=5, show_default=True, envvar="EDGE_SEL_EPOCHS", show_envvar=True,
                     help="Epochs to train tonight."),
    # Measured over six CIFAR-10 nights (docs/lifelong.md): statistics per condition kept the clean
    # test and a noisy camera's accuracy where one set of statistics could keep only one of them.
    "--bn-conditions": dict(default=None, show_default=False, envvar="EDGE_SEL_BN_CONDITIONS", show_envvar=True,
                            help="BatchNorm statistics kept for up to K conditions, each batch normalised with "
                                 "those of the condition its pixels are nearest to (0: off) [default for a night: "
                                 f"{NIGHT_BN_CONDITIONS} when the start checkpoint ships its anchors and has "
                                 "BatchNorm layers, else 0]."),
}


def for_a_night(family: list) -> list:
    """A finetune option family as `edge-sel night` takes it: the same options, without those a
    night decides itself, with a device's defaults where the systemd unit sets them."""
    return [option(*spec.decls, **{**spec.attrs, **NIGHT_DEFAULTS.get(spec.flag, {})})
            for spec in family if spec.flag not in NOT_FOR_A_NIGHT]


# Headings of --help, in order, with the options under each (an option named by no heading is
# listed under "Other options", so a new method option still shows).
RUN = ["--out", "--overwrite", "--resume", "--checkpoint-every", "--quiet"]
TRAINING = ["--epochs", "--batch-size", "--optimizer", "--lr", "--momentum", "--weight-decay", "--schedule",
            "--warmup-epochs", "--label-smoothing", "--no-augment", "--seed", "--device", "--precision"]
DATA_SECTION = ("Data", [o.flag for o in DATA])
SPEED_SECTION = ("Speed", [o.flag for o in SPEED])
ENERGY_SECTION = ("Energy and temperature", [o.flag for o in ENERGY])

PRETRAIN_SECTIONS = [
    ("Model and output", ["--model", "--model-arg", "--init-weights", "--pretrained", "--input-norm",
                          "--export-artifacts", *RUN]),
    ("What devices get with the checkpoint", ["--anchors-per-class", "--fisher-samples", "--set-gains-steps"]),
    ("From pretrained weights", ["--recipe", "--head-epochs", "--head-lr", "--head-bn-adapt", "--backbone-lr-scale",
                                  "--bn-momentum", "--bn-stats"]),
    DATA_SECTION,
    ("Training", TRAINING),
    ENERGY_SECTION,
    SPEED_SECTION,
]

FINETUNE_SECTIONS = [
    ("Checkpoint and output", ["--checkpoint", *RUN, "--keep", "--max-forgetting"]),
    DATA_SECTION,
    ("Training", [*TRAINING, "--bn-stats", "--bn-momentum", "--bn-mode", "--bn-adapt", "--backend", "--artifacts",
                  "--memory-budget", "--time-budget"]),
    ("Against forgetting (need the checkpoint's anchors)", ["--ewc", "--replay", "--bn-anchor-share",
                                                            "--reset-forgetting", "--bn-conditions",
                                                            "--bn-condition-images", "--bn-condition-radius"]),
    ("Method (which samples)", ["--strategy", "--preset", "--target-activation"]),
    ("Gate (sundew, random, infobatch, dihcl: --gate, or as --strategy)",
     ["--gate", "--significance", "--unseen", "--gate-window", "--gate-temperature", "--min-activation",
      "--unbiased", "--keep-floor", "--novelty", "--novelty-memory", "--novelty-radius", "--anneal", "--energy-budget-per-epoch", "--prune-ratio", "--dih-select",
      "--dih-signal", "--dih-warm", "--dih-gamma", "--dih-shrink", "--dih-floor"]),
    ("SEL curriculum (--strategy sel)",
     ["--difficulty", "--stages", "--stage-gates", "--stage-patience", "--class-focus", "--class-focus-floor",
      "--lr-loss-scale", "--easy-warmup-epochs", "--easy-warmup-size"]),
    ("Sparse update (which parameters change)",
     ["--sparsity", "--guilt-percentile", "--guilt-decay", "--guilt-samples", "--guilt-model", "--probe-every",
      "--layer-sparsity", "--blocks", "--rgn-floor", "--last-k"]),
    ENERGY_SECTION,
    SPEED_SECTION,
]


NIGHT_SECTIONS = [
    ("Home", [o.flag for o in HOME]),
    ("Output and judging", [flag for flag in FINETUNE_SECTIONS[0][1] if flag not in NOT_FOR_A_NIGHT]),
    *FINETUNE_SECTIONS[1:],
]


def in_sections(sections: list[tuple[str, list[str]]], *families: list[OptionSpec]):
    """Adds every option of `families` to a command, each under the heading that names its flag."""
    plain = [opt for family in families for opt in family if not isinstance(opt, OptionSpec)]   # click.option(...)
    specs = {spec.flag: spec for family in families for spec in family if isinstance(spec, OptionSpec)}
    grouped = [(title, [specs.pop(flag) for flag in flags if flag in specs]) for title, flags in sections]
    if specs:
        grouped.append(("Other options", list(specs.values())))

    def decorate(fn):
        for opt in reversed(plain):
            fn = opt(fn)
        for title, members in reversed(grouped):
            if members:
                group = OptionGroup(title)
                for spec in reversed(members):
                    fn = group.option(*spec.decls, **spec.attrs)(fn)
        return fn
    return decorate
