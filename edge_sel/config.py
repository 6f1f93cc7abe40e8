"""Run configuration: one dataclass, filled from CLI options (and later device profiles), validated
with errors that name the option at fault."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edge_sel.errors import InputError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step", "linear")


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
    amp: bool = True                  # only takes effect on CUDA
    temperature: float = 1.5          # T in E_c = mean CE(logits / T, y)
    eval_batch_size: int = 1000
    checkpoint_every: int = 200       # steps between mid-epoch full-state checkpoints (0: epoch ends only)
    strategy: str = "dense"
    sparsity: str = "none"
    backend: str = "torch"
    artifacts: str | None = None      # ORT training artifacts directory (backend "ort")
    bn_mode: str | None = None        # "eval": BatchNorm keeps frozen running stats while training
    method: dict = field(default_factory=dict)   # strategy/updater options (target activation, ...)

    def validate(self) -> "TrainConfig":
        checks = [
            (self.epochs >= 0, "--epochs", f"must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, "--batch-size", f"must be >= 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, "--optimizer", f"must be one of {', '.join(OPTIMIZERS)}"),
            (self.lr > 0, "--lr", f"must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, "--momentum", f"must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, "--weight-decay", f"must be >= 0, got {self.weight_decay}"),
            (self.schedule in SCHEDULES, "--schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup_epochs <= max(self.epochs, 0), "--warmup-epochs",
             f"must be between 0 and --epochs, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing", "must be in [0, 1)"),
            (self.temperature > 0, "--temperature", f"must be > 0, got {self.temperature}"),
            (self.checkpoint_every >= 0, "--checkpoint-every", f"must be >= 0 steps, got {self.checkpoint_every}"),
            (self.bn_mode in (None, "train", "eval"), "--bn-mode", f"must be train or eval, got {self.bn_mode!r}"),
            (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
             "--device", f"must be cpu, cuda, mps or auto, got {self.device!r}"),
        ]
        for ok, option, message in checks:
            if not ok:
                raise InputError(f"{option} {message}")
        return self

    def to_json(self) -> dict:
        return asdict(self)
