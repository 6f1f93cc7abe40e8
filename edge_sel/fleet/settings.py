"""The fleet run's settings (the Flower app's run config): every key with its default, so the app's
pyproject lists them all and `flwr run --run-config` may override any of them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edge_sel.core.outputs import refuse_onto_inputs
from edge_sel.errors import InputError, parse_json

FLEET_STRATEGIES = ("fedavg", "fedprox")


@dataclass
class ServerSettings:
    out: str = ""                   # the server's run directory
    checkpoint: str = ""            # the warmup checkpoint the fleet starts from
    resume: bool = False            # continue the run in `out` from its last completed round
    overwrite: bool = False
    rounds: int = 3
    fleet_strategy: str = "fedavg"
    proximal_mu: float = 0.0        # fedprox only
    min_clients: int = 2            # a round waits until this many SuperNodes are connected
    round_timeout: float = 3600.0   # seconds a round waits for replies
    eval_dataset: str = ""          # held-out set for the global model (its test split)
    eval_data_dir: str = ""
    eval_subset: int = 0            # evaluate on the first N held-out samples (0: all)
    local_epochs: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = -1.0                # < 0: edge-sel's default for the optimizer
    strategy: str = "dense"         # the clients' edge-sel method
    sparsity: str = "none"
    backend: str = "torch"
    method: str = "{}"              # method options as JSON, e.g. {"target_activation": 0.3}
    keep: str = "last"
    seed: int = 0
    memory_format: str = "auto"     # the clients' layout: auto (measured once per device), or as given
    eval_batch_size: int = 0
    val_subset: int = 0             # the clients validate on this many local samples (0: all)
    simulation: str = "{}"          # fleet simulate: how the clients' data was dealt (checked on --resume)

    @staticmethod
    def key(name: str) -> str:
        return name.replace("_", "-")

    def to_run_config(self) -> dict:
        return {self.key(k): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, config: dict) -> "ServerSettings":
        values = {}
        for f in fields(cls):
            raw = config.get(cls.key(f.name), f.default)
            kind = type(f.default)
            if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
                raw = float(raw)
            if type(raw) is not kind:
                raise InputError(f"fleet run config {cls.key(f.name)}: expected {kind.__name__}, got {raw!r}")
            values[f.name] = raw
        return cls(**values).validate()

    def validate(self) -> "ServerSettings":
        if not self.out:
            raise InputError("--out: the fleet run directory is required")
        if not self.checkpoint and not self.resume:
            raise InputError("--checkpoint: the warmup checkpoint is required")
        if self.fleet_strategy not in FLEET_STRATEGIES:
            raise InputError(f"--fleet-strategy must be one of {', '.join(FLEET_STRATEGIES)}, "
                             f"got {self.fleet_strategy!r}")
        for option, value, lo in (("--rounds", self.rounds, 1), ("--min-clients", self.min_clients, 1),
                                  ("--local-epochs", self.local_epochs, 1), ("--batch-size", self.batch_size, 1),
                                  ("--eval-subset", self.eval_subset, 0)):
            if value < lo:
                raise InputError(f"{option} must be >= {lo}, got {value}")
        if self.proximal_mu < 0:
            raise InputError(f"--proximal-mu must be >= 0, got {self.proximal_mu}")
        if self.fleet_strategy == "fedprox" and self.proximal_mu == 0:
            raise InputError("--proximal-mu: fedprox needs a proximal weight > 0 (0 is plain fedavg)")
        if self.fleet_strategy != "fedprox" and self.proximal_mu != 0:
            # the clients would pull towards the global weights: FedProx recorded as another strategy
            raise InputError(f"--proximal-mu {self.proximal_mu}: only --fleet-strategy fedprox has a "
                             f"proximal term; pass --fleet-strategy fedprox or drop --proximal-mu")
        self._check_checkpoint_outside_out()
        if not self.round_timeout > 0:
            raise InputError(f"--round-timeout must be > 0 seconds, got {self.round_timeout}")
        for key in ("method", "simulation"):
            text = getattr(self, key)
            try:
                value = parse_json(text)
            except json.JSONDecodeError as e:
                raise InputError(f"fleet run config {key}: not JSON ({e})") from None
            if not isinstance(value, dict):
                raise InputError(f"fleet run config {key}: expected a JSON object, got {text!r}")
        return self

    def _check_checkpoint_outside_out(self) -> None:
        """A new run replaces --out: a checkpoint inside it (an earlier fleet's rounds/round-K), or
        holding it, is refused (core/outputs.py)."""
        if self.resume or not self.checkpoint or not self.out:
            return
        refuse_onto_inputs(self.out_dir, [("--checkpoint", Path(self.checkpoint).expanduser())])

    @property
    def method_options(self) -> dict:
        return parse_json(self.method)

    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser()
