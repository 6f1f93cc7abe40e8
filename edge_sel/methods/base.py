"""The two choices a method makes: which samples are computed (Strategy) and which parameters
change (Updater). The engine composes them; neither knows about the other."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edge_sel.data import Batch, IndexedDataset
from edge_sel.data.frames import stream_positions


@dataclass
class Plan:
    """The samples one epoch computes, in order. Anything not listed costs no forward or backward."""
    positions: torch.Tensor                  # positions into the training dataset
    weights: torch.Tensor | None = None      # per-sample loss weights (e.g. 1/keep-probability)
    info: dict = field(default_factory=dict)  # extra record fields (threshold trace summary, ...)


@dataclass
class RunContext:
    """What strategies and updaters may read: data, model, schedule length, a seeded generator."""
    train: IndexedDataset
    val: IndexedDataset
    model: nn.Module
    epochs: int
    generator: torch.Generator
    device: torch.device
    mean: list[float]
    std: list[float]
    batch_size: int
    config: dict = field(default_factory=dict)
    # Set by the engine: per-sample losses of a dataset under the current (or a given) model,
    # counted as a scoring pass: score_fn(positions=None, model=None) -> losses.
    score_fn: object = None
    # Kept current by the engine: {"epoch", "step", "lr"} (DIHCL normalises by the learning rate).
    state: dict = field(default_factory=dict)
    # Set by the engine: forward_fn(x) -> logits, a no-grad forward of one batch in training mode,
    # counted as a scoring pass (the seed's two-pass gating decides on it inside `filter_batch`).
    forward_fn: object = None
    # Set by the engine: charge_fn(samples, flops) adds a gate's own counted work (e.g. novelty
    # fingerprints) to the epoch's scoring cost.
    charge_fn: object = None


class Strategy:
    """Dense by default: every sample, every epoch, in a seeded random order (a camera's stream:
    scene by scene, see edge_sel.data.frames)."""
    name = "dense"

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def plan(self, epoch: int) -> Plan:
        return Plan(stream_positions(self.ctx.train, self.ctx.generator))

    def observe(self, batch: Batch, losses: torch.Tensor, logits: torch.Tensor) -> None:
        """Per-sample losses and logits of the training forward pass: free hardness signals."""

    def filter_batch(self, batch: Batch) -> Batch | None:
        """Online gating: may shrink a planned batch just before its step (None or empty: skip it).
        Anything it computes to decide must go through ctx.forward_fn / ctx.score_fn (counted)."""
        return batch

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        """Called after evaluation with the epoch's metrics (val_acc, E_<class>, ...).
        Returns extra record fields (stage, gate outcome, ...)."""
        return {}

    def lr_scale(self, batch_loss: torch.Tensor | None) -> float:
        """Multiplier on the scheduled learning rate for the next step (seed presets use it).
        `batch_loss` is the previous step's mean loss as a tensor (None before the first step);
        reading it with float() synchronises a GPU, so only strategies that need it should."""
        return 1.0

    def finished(self) -> bool:
        """True when the strategy has nothing left to train (e.g. curriculum ran out of stages)."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Updater:
    """Dense: every parameter follows the optimizer."""
    name = "dense"
    saves_compute = False
    # True: what requires grad when an epoch starts is all that can move in it (a set fixed per run),
    # so the epoch's snapshot for params_updated_frac leaves the other tensors out.
    static_set = False

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: RunContext) -> None:
        self.model, self.optimizer, self.ctx = model, optimizer, ctx

    def before_step(self, step: int, batch: Batch) -> None:
        """May change which tensors require grad (structured sparsity)."""

    def after_backward(self, step: int) -> None:
        """May edit gradients before the optimizer step."""

    def after_step(self, step: int) -> None:
        """May restore entries that must not move."""

    def end_epoch(self) -> dict:
        return {"grad_sparsity": 0.0}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Gate:
    """Filters a strategy's plan before compute: a skipped sample costs no forward and no backward.
    The default keeps everything."""
    name = "all"

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def select(self, epoch: int, plan: Plan) -> Plan:
        return plan

    def filter_batch(self, batch: Batch) -> Batch | None:
        """Online gating of one planned batch (see Strategy.filter_batch)."""
        return batch

    def observe(self, batch: Batch, losses: torch.Tensor, logits: torch.Tensor) -> None:
        pass

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GatedStrategy(Strategy):
    """A strategy's plan filtered by a gate: e.g. a curriculum stage gated by the Sundew controller."""

    def __init__(self, base: Strategy, gate: Gate):
        self.base, self.gate = base, gate
        self.name = gate.name if base.name == "dense" else f"{base.name}+{gate.name}"

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.base.setup(ctx)
        self.gate.setup(ctx)

    def plan(self, epoch: int) -> Plan:
        return self.gate.select(epoch, self.base.plan(epoch))

    def filter_batch(self, batch):
        batch = self.base.filter_batch(batch)
        return None if batch is None else self.gate.filter_batch(batch)

    def observe(self, batch, losses, logits) -> None:
        self.base.observe(batch, losses, logits)
        self.gate.observe(batch, losses, logits)

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        return {**self.base.end_epoch(epoch, metrics), **self.gate.end_epoch(epoch, metrics)}

    def lr_scale(self, batch_loss) -> float:
        return self.base.lr_scale(batch_loss)

    def finished(self) -> bool:
        return self.base.finished()

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "gate": self.gate.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state.get("base", {}))
        self.gate.load_state_dict(state.get("gate", {}))
