"""SEL's staged curriculum: per-class pools sorted easy-to-hard once, then a table of overlapping
windows trained stage by stage, each stage gated on validation accuracy.

Difficulty (the per-sample loss that sorts each class's pool) comes from a scorer:
  warmup  the model at the start of fine-tuning (the warmup checkpoint);
  cold    an untrained model of the same architecture (the seed's choice);
  random  no scorer, a seeded random order (the control).
Scoring goes through ctx.score_fn, so its forward passes are counted in the first record.

Epoch budget: the table's epochs are kept when --epochs covers them; otherwise the epochs left
are shared among the stages left in proportion to the table (stages.allocate_epochs), so a short
run still visits every stage. Allocation is redone at every stage start, so epochs spent on gate
repeats come out of the later stages.

Gate: at the end of a stage's epochs, validation accuracy below the stage's threshold earns up
to `patience` extra epochs ("repeat"), each only if every later stage can still get an epoch;
then the stage advances anyway, recorded as "fail". With gates not enforced (the seed), the
outcome is recorded and never acted on.
"""

from __future__ import annotations

import math

import torch

from edge_sel.methods.base import Plan, RunContext, Strategy
from edge_sel.methods.select.stages import StageSpec, allocate_epochs
from edge_sel.models import untrained_twin

DIFFICULTIES = ("warmup", "cold", "random")


def sorted_pools(losses: torch.Tensor | None, labels: torch.Tensor, num_classes: int,
                 generator: torch.Generator) -> list[torch.Tensor]:
    """Positions of each class, easiest (lowest loss) first; a random order when losses is None."""
    labels = labels.cpu()
    pools = []
    for c in range(num_classes):
        pos = (labels == c).nonzero().flatten()
        if losses is None:
            pools.append(pos[torch.randperm(len(pos), generator=generator)])
        else:
            order = torch.argsort(losses.cpu()[pos], stable=True)
            pools.append(pos[order])
    return pools


class SelCurriculum(Strategy):
    name = "sel"
    reads_validation = True     # its stage gates: every validated epoch's accuracy, whatever --keep says

    def __init__(self, stages: list[StageSpec], difficulty: str = "warmup", enforce_gates: bool = True,
                 patience: int = 2, lr_loss_scale: float = 0.0, easy_warmup_epochs: int = 0,
                 easy_warmup_size: int = 10_000):
        self.table = list(stages)
        self.difficulty = difficulty
        self.enforce = enforce_gates
        self.patience = patience
        self.lr_loss_scale = lr_loss_scale
        self.easy_warmup_epochs = easy_warmup_epochs
        self.easy_warmup_size = easy_warmup_size
        self.pools: list[torch.Tensor] | None = None

    # -- set-up ---------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.stages = list(self.table)
        if self.easy_warmup_epochs > 0:
            # The seed's warmup: dense epochs on the 10,000 easiest samples (1,000 per class of
            # CIFAR-10's 5,000). Scaled: at most size/K per class and at most 20% of each pool.
            cap = math.ceil(self.easy_warmup_size / ctx.train.num_classes)
            self.stages.insert(0, StageSpec(0, 20, None, self.easy_warmup_epochs, cap, dense=True))
        self.numbers = []
        n = 0
        for s in self.stages:
            n += 0 if s.dense else 1
            self.numbers.append(0 if s.dense else n)
        self.curriculum_stages = n
        self.index = 0            # current stage
        self.epochs_done = 0      # epochs trained so far by this strategy
        self._start_stage()

    def _score_pools(self, ctx: RunContext) -> list[torch.Tensor]:
        seed = int(ctx.config.get("seed", 0))
        generator = torch.Generator().manual_seed(seed + 7)
        if self.difficulty == "random":
            losses = None
        elif self.difficulty == "cold":
            losses = ctx.score_fn(positions=None, model=untrained_twin(ctx.model, seed + 101))
        else:
            losses = ctx.score_fn(positions=None, model=ctx.model)
        return sorted_pools(losses, ctx.train.labels, ctx.train.num_classes, generator)

    # -- stage bookkeeping ----------------------------------------------------------------
    def _start_stage(self) -> None:
        self.stage_epoch = 0
        self.repeats = 0
        left = self.ctx.epochs - self.epochs_done
        if self.index < len(self.stages):
            alloc = allocate_epochs([s.epochs for s in self.stages[self.index:]], max(0, left))
            self.planned = alloc[0]

    @property
    def stage(self) -> StageSpec:
        return self.stages[self.index]

    def finished(self) -> bool:
        return self.index >= len(self.stages) or (self.planned == 0 and self.stage_epoch == 0)

    def stage_positions(self) -> torch.Tensor:
        parts = []
        for pool in self.pools:
            lo, hi = self.stage.window(len(pool))
            parts.append(pool[lo:hi])
        return torch.cat(parts)

    # -- the strategy hooks ---------------------------------------------------------------
    def plan(self, epoch: int) -> Plan:
        if self.pools is None:
            # Scored in the first plan, not at set-up, so the scoring pass's time and energy
            # fall inside the first epoch's window, next to its counted FLOPs.
            self.pools = self._score_pools(self.ctx)
        stage, number = self.stage, self.numbers[self.index]
        self.ctx.state.update(stage=number, curriculum_stages=self.curriculum_stages, stage_dense=stage.dense)
        positions = self.stage_positions()
        positions = positions[torch.randperm(len(positions), generator=self.ctx.generator)]
        if len(positions) % self.ctx.batch_size == 1 and len(positions) > 1:
            positions = positions[:-1]   # a last batch of one sample breaks BatchNorm in train mode
        info = {"stage": number, "stage_window": [stage.start, stage.end], "stage_samples": len(positions),
                "stage_epoch": self.stage_epoch + 1, "stage_epochs_planned": self.planned,
                "stage_threshold": stage.threshold, "stage_gates_enforced": self.enforce,
                "difficulty": self.difficulty}
        return Plan(positions.to(self.ctx.device), None, info)

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        self.epochs_done += 1
        self.stage_epoch += 1
        if self.stage_epoch < self.planned + self.repeats:
            return {"stage_gate": None}
        threshold, acc = self.stage.threshold, metrics.get("val_acc")
        if threshold is None:
            outcome = None
        elif acc is not None and acc >= threshold:
            outcome = "pass"
        elif self.enforce and self.repeats < self.patience and self._can_repeat():
            self.repeats += 1
            return {"stage_gate": "repeat"}
        else:
            outcome = "fail"
        self.index += 1
        self._start_stage()
        return {"stage_gate": outcome}

    def _can_repeat(self) -> bool:
        """One more epoch here must leave at least one epoch for every later stage."""
        left = self.ctx.epochs - self.epochs_done
        return left - 1 >= len(self.stages) - self.index - 1

    def lr_scale(self, batch_loss) -> float:
        # The seed: lr = base * (1 + 2 * batch loss). Here the previous step's loss sets the next
        # step's lr (the loop sets lr before the forward pass), a one-step lag.
        if not self.lr_loss_scale or batch_loss is None or self.stage.dense:
            return 1.0
        return 1.0 + self.lr_loss_scale * float(batch_loss)

    def state_dict(self) -> dict:
        return {"pools": [p.tolist() for p in self.pools or []], "index": self.index,
                "epochs_done": self.epochs_done, "stage_epoch": self.stage_epoch, "repeats": self.repeats,
                "planned": self.planned}

    def load_state_dict(self, state: dict) -> None:
        if state.get("pools"):
            self.pools = [torch.tensor(p, dtype=torch.long) for p in state["pools"]]
        for key in ("index", "epochs_done", "stage_epoch", "repeats", "planned"):
            if key in state:
                setattr(self, key, state[key])
