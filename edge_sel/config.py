"""Run configuration: one dataclass, filled from CLI options (and later device profiles), validated
with errors that name the option at fault."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edge_sel.core.bn_stats import BN_STATS
from edge_sel.errors import InputError

# `--bn-conditions` of an `edge-sel night` that does not say, when its start checkpoint can keep
# statistics per condition (engine/night/life.py decides).
NIGHT_BN_CONDITIONS = 4

# Bounds past which a value cannot be meant: a run of more epochs never ends on any device, an
# image side beyond it does not fit in memory; a thermal guard below the range pauses at room
# temperature (every step), above it is past any chip's own shutdown (a profile's range too).
MAX_EPOCHS = 100_000
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024     # --image-size in every command
GUARD_TEMP_C = (30.0, 120.0)
MAX_MEMORY_BUDGET_MB = 1e7    # 10 TB: a larger budget is a typo, wherever it is given (option or profile)
# Validation sized for a device (engine/loop/val_size.py): the share of the run's counted compute it may
# take, under --preset adapt and under a budget without --val-subset.
DEVICE_VAL_SHARE = 0.2

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step", "linear")
KEEP_CHOICES = ("best", "last")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
EVAL_TEST = ("end", "every")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _number(option: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{option} must be a finite number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise InputError(f"{option} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise InputError(f"{option} must be {'<' if hi_open else '<='} {hi}, got {value}")


def check_points(option: str, value) -> None:
    """Percentage points (of accuracy), 0 to 100: what --max-forgetting takes, wherever it is given."""
    _number(option, value, lo=0, hi=100)


def _integer(option: str, value, lo=None, hi=None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{option} must be a whole number, got {value!r}")
    _number(option, value, lo=lo, hi=hi)


def _choice(option: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"{option} must be one of {', '.join(str(c) for c in choices if c)}, got {value!r}")


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"           # training step: auto (CPU: measured; CUDA: bf16 or fp16), fp32, bf16, fp16
    eval_precision: str = "auto"      # evaluation, scoring, BN re-estimation: auto (measured with it) or as given
    temperature: float = 1.5          # T in E_c = mean CE(logits / T, y)
    eval_batch_size: int = 0          # 0: measured on this device (engine.layout)
    memory_format: str = "auto"       # conv activations: auto (measured), channels_last or contiguous
    # validate every K epochs (the last always); 0: every epoch, and a fine-tune that keeps its last
    # epoch its last alone (engine/loop/val_size.py)
    eval_every: int = 0
    eval_test: str = "end"            # test set: at the "end" only, or after "every" validation
    val_subset: int = 0               # validate on this many samples (0: the whole validation split)
    val_share: float = 0.0            # >0: size val_subset so validation is at most this share of compute
    guard_subset: int = 0             # guard anchors each validation evaluates, a fixed draw (0: all of them)
    sync_every: int = 0               # steps between host reads of the loss sums (0: 1 on CPU, 32 on GPUs)
    compile: bool = False             # torch.compile the model (compile time lands in the first epoch)
    checkpoint_every: int = 200       # steps between mid-epoch full-state checkpoints (0: epoch ends only)
    strategy: str = "dense"
    sparsity: str = "none"
    backend: str = "torch"
    artifacts: str | None = None      # ORT training artifacts directory (backend "ort")
    bn_mode: str | None = None        # "eval": BatchNorm keeps frozen running stats while training
    # --bn-stats frozen|reestimate|per-condition (core/bn_stats.py): the one lever that bn_mode and
    # bn_conditions are older names of; None: those decide.
    bn_stats: str | None = None
    method: dict = field(default_factory=dict)   # strategy/updater options (target activation, ...)
    keep: str = "best"                # output model: best by local validation (warmup included) or last
    bn_adapt: int = 0                 # re-estimate BatchNorm statistics on this many local images first
    # What pretrain ships for a device's life (core/source_memory.py): anchors per class, Fisher samples.
    anchors_per_class: int = 100
    fisher_samples: int = 1000
    set_gains_steps: int = 0          # pretrain: each set's recipes measured up to this many steps (0: not; -1: sized)
    # Levers against forgetting (fine-tune; each needs the checkpoint's source memory).
    ewc: float = 0.0                  # weight of the Fisher penalty toward the source weights
    replay: float = 0.0               # share of each training batch drawn from the replay anchors
    bn_anchor_share: float = 0.0      # share of the BatchNorm re-estimation images that are anchors
    reset_forgetting: float | None = None   # points of guard-anchor accuracy lost before a reset to the source
    max_forgetting: float = 3.0       # points of guard-anchor accuracy a kept or deployed model may lose
    # BatchNorm statistics kept per condition (engine/evaluation/bn_bank.py): how many conditions, the images
    # kept of each, and how near tonight's fingerprint must be to one to count as it.
    bn_conditions: int = 0
    bn_condition_images: int = 256
    bn_condition_radius: float = 0.25
    # --memory-budget: the training step's counted peak in MiB (engine/machine/memory_plan.py); the plan
    # that fits it is kept here once made, so a resumed run runs the same step.
    memory_budget_mb: float | None = None
    memory_plan: dict | None = None
    # --time-budget: the run's wall seconds; it stops cleanly before they would be passed (engine/loop/budget.py,
    # as --energy-budget's joules), and a --sparsity budget plan chooses what trains within it (joule_plan.py).
    time_budget_s: float | None = None
    # A pretrain from pretrained weights (engine/runs/head_first.py): the new head trains alone first for
    # head_epochs at head_lr (None: lr), backbone frozen and BatchNorm in eval mode; bn_momentum is every
    # BatchNorm layer's momentum while the rest trains (None: the model's own).
    head_epochs: int = 0
    head_lr: float | None = None
    bn_momentum: float | None = None
    head_bn_adapt: int = 0            # BatchNorm statistics re-estimated on N training images before the head stage
    backbone_lr_scale: float = 1.0    # the fine-tuning stage's learning rate for all but the classifier, times lr
    # A pretrain's recipe (engine/runs/recipe.py): "auto" chooses by the data; once chosen, what ran.
    recipe: str = "auto"
    # False: a fine-tune does not evaluate its starting model (a bench evaluates it once for all its runs).
    evaluate_start: bool = True
    # FedProx's pull towards the round's weights (a fleet client's round sets it): its copy of the
    # weights and the pull are counted under a memory budget.
    proximal_mu: float = 0.0
    # Training options the user gave on the command line (a preset never overrides those); None when
    # unknown (the Python API), then a value other than the default counts as the user's choice.
    explicit: list | None = None
    # What `--sparsity auto` chose (engine/loop/default_choice.py), kept so a resume runs the same.
    choice: dict | None = None

    def pin_for_memory_budget(self) -> "TrainConfig":
        """Under a memory budget the step runs as it was counted: memory is counted for fp32 tensors
        in the contiguous layout, and the layout and precision probes would time whole unplanned
        steps; evaluation takes at most a training batch at a time (fewer where the plan needs:
        engine/loop/step_memory.py). Choices the user made stay; without a budget nothing changes."""
        if self.memory_budget_mb is not None:
            self.precision = "fp32" if self.precision == "auto" else self.precision
            self.eval_precision = "fp32" if self.eval_precision == "auto" else self.eval_precision
            self.memory_format = "contiguous" if self.memory_format == "auto" else self.memory_format
            self.eval_batch_size = self.eval_batch_size or self.batch_size
        return self

    def validate(self) -> "TrainConfig":
        """Types and ranges of every field; values may come from a hand-edited config.json."""
        _integer("--epochs", self.epochs, lo=0, hi=MAX_EPOCHS)
        _integer("--batch-size", self.batch_size, lo=1)
        _integer("--checkpoint-every", self.checkpoint_every, lo=0)
        _number("--lr", self.lr, lo=0, lo_open=True)
        _number("--momentum", self.momentum, lo=0, hi=1, hi_open=True)
        _number("--weight-decay", self.weight_decay, lo=0)
        _number("--warmup-epochs", self.warmup_epochs, lo=0, hi=self.epochs)
        _number("--label-smoothing", self.label_smoothing, lo=0, hi=1, hi_open=True)
        _number("--temperature", self.temperature, lo=0, lo_open=True)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--schedule", self.schedule, SCHEDULES)
        _choice("--bn-mode", self.bn_mode, (None, "train", "eval"))
        _choice("--bn-stats", self.bn_stats, (None, *BN_STATS))
        _choice("--keep", self.keep, KEEP_CHOICES)
        _integer("--bn-adapt", self.bn_adapt, lo=0)
        _integer("--eval-batch-size", self.eval_batch_size, lo=0)
        _integer("--anchors-per-class", self.anchors_per_class, lo=0)
        _integer("--fisher-samples", self.fisher_samples, lo=0)
        _integer("--set-gains-steps", self.set_gains_steps, lo=-1)
        _number("--ewc", self.ewc, lo=0)
        _number("proximal_mu", self.proximal_mu, lo=0)
        _number("--replay", self.replay, lo=0, hi=0.9)
        _number("--bn-anchor-share", self.bn_anchor_share, lo=0, hi=1, hi_open=True)
        if self.reset_forgetting is not None:
            _number("--reset-forgetting", self.reset_forgetting, lo=0, hi=100)
        _number("--max-forgetting", self.max_forgetting, lo=0, hi=100)
        if self.bn_conditions is not None:
            _integer("--bn-conditions", self.bn_conditions, lo=0)
            if self.bn_conditions == 1:
                raise InputError("--bn-conditions must be 0 (off) or >= 2, got 1")
        _integer("--bn-condition-images", self.bn_condition_images, lo=1)
        _number("--bn-condition-radius", self.bn_condition_radius, lo=0, lo_open=True)
        if self.memory_budget_mb is not None:
            _number("--memory-budget", self.memory_budget_mb, lo=0, lo_open=True, hi=MAX_MEMORY_BUDGET_MB)
            if self.backend != "torch":
                raise InputError("--memory-budget: needs --backend torch (ORT artifacts fix what trains when exported)")
            if self.sparsity == "mask":
                raise InputError("--sparsity mask: its guilt mask copies every trained weight and its optimizer state "
                                 "each step, which a --memory-budget plan cannot count; use --sparsity budget (the "
                                 "default with a budget), classifier, last-k, bias-norm or none")
        if self.time_budget_s is not None:
            _number("--time-budget", self.time_budget_s, lo=0, lo_open=True)
        if self.memory_plan is not None and not isinstance(self.memory_plan, dict):
            raise InputError(f"memory_plan must be a mapping, got {self.memory_plan!r}")
        if self.sparsity == "budget" and self.memory_budget_mb is None:
            raise InputError("--sparsity budget: chooses what trains under --memory-budget MiB; give one")
        _integer("--head-epochs", self.head_epochs, lo=0, hi=MAX_EPOCHS)
        if self.head_lr is not None:
            _number("--head-lr", self.head_lr, lo=0, lo_open=True)
        _integer("--head-bn-adapt", self.head_bn_adapt, lo=0)
        if self.head_bn_adapt and not self.head_epochs:
            raise InputError(f"--head-bn-adapt {self.head_bn_adapt}: runs before the head stage; give --head-epochs")
        _number("--backbone-lr-scale", self.backbone_lr_scale, lo=0, hi=1, lo_open=True)
        if self.backbone_lr_scale != 1.0 and not self.head_epochs:
            raise InputError(f"--backbone-lr-scale {self.backbone_lr_scale}: scales the fine-tuning stage after "
                             "--head-epochs; give those too")
        if self.bn_momentum is not None:
            _number("--bn-momentum", self.bn_momentum, lo=0, hi=1, lo_open=True)
        if not isinstance(self.evaluate_start, bool):
            raise InputError(f"evaluate_start must be true or false, got {self.evaluate_start!r}")
        if not self.evaluate_start and (self.keep == "best" or self.reset_forgetting is not None):
            raise InputError("evaluate_start false: --keep best and --reset-forgetting judge the starting model; "
                             "it must be evaluated")
        _integer("--eval-every", self.eval_every, lo=0)
        _integer("--val-subset", self.val_subset, lo=0)
        _number("val_share", self.val_share, lo=0, hi=1, hi_open=True)
        _integer("guard_subset", self.guard_subset, lo=0)
        _integer("--sync-every", self.sync_every, lo=0)
        _choice("--memory-format", self.memory_format, MEMORY_FORMATS)
        _choice("--eval-test", self.eval_test, EVAL_TEST)
        _choice("--precision", self.precision, PRECISIONS)
        _choice("eval_precision", self.eval_precision, PRECISIONS)
        if not isinstance(self.compile, bool):
            raise InputError(f"--compile must be true or false, got {self.compile!r}")
        if self.compile and self.backend != "torch":
            raise InputError("--compile: needs --backend torch (ORT runs its own graph optimisations)")
        if self.precision not in ("auto", "fp32") and self.backend != "torch":
            raise InputError(f"--precision {self.precision}: needs --backend torch (ORT artifacts train in fp32)")
        if self.bn_adapt and self.bn_conditions:
            raise InputError(f"--bn-adapt {self.bn_adapt} with --bn-conditions {self.bn_conditions}: the bank "
                             "re-estimates every condition's statistics itself, so one set re-estimated first "
                             "would be overridden; choose one (--preset adapt sets --bn-adapt 500)")
        if self.bn_adapt and self.backend != "torch":
            raise InputError("--bn-adapt: needs --backend torch (ORT artifacts carry their own BatchNorm statistics)")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda", "mps")
                                                    or self.device.startswith("cuda:")):
            raise InputError(f"--device must be cpu, cuda, mps or auto, got {self.device!r}")
        if "fp16" in (self.precision, self.eval_precision) and self.device in ("cpu", "mps"):
            raise InputError(f"--precision fp16: needs a CUDA device (its loss scaling is CUDA's); on {self.device} "
                             "use bf16 or auto")
        if self.explicit is not None and not (isinstance(self.explicit, list)
                                              and all(isinstance(x, str) for x in self.explicit)):
            raise InputError(f"explicit options must be a list of names, got {self.explicit!r}")
        if self.choice is not None and not isinstance(self.choice, dict):
            raise InputError(f"choice must be a mapping, got {self.choice!r}")
        if not isinstance(self.method, dict):
            raise InputError(f"method options must be a mapping, got {self.method!r}")
        for name, value in self.method.items():       # each method's own checks follow; NaN passes comparisons
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"--{str(name).replace('_', '-')} must be a finite number, got {value}")
        return self

    def to_json(self) -> dict:
        return asdict(self)
