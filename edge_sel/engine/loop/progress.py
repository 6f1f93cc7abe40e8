"""How far an epoch has got: its plan, counters and sums, saved inside mid-epoch checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from edge_sel.data import Batch
from edge_sel.engine.evaluation.evaluate import EmbarrassmentMeter
from edge_sel.methods import Plan


def snapshot_params(model: torch.nn.Module, trained_only: bool = False) -> list[torch.Tensor | None]:
    """Every parameter's values, or (`trained_only`: the updater's set is fixed, so nothing else can
    move this epoch) those that require grad, None in the others' places."""
    return [p.detach().clone() if p.requires_grad or not trained_only else None for p in model.parameters()]


def changed_fraction(model: torch.nn.Module, before: list[torch.Tensor | None]) -> float:
    """Share of parameter entries whose value differs from `before`: what actually moved (a tensor
    not kept did not)."""
    params = list(model.parameters())
    changed = sum((p.detach() != b).sum().item() for p, b in zip(params, before) if b is not None)
    return changed / max(1, sum(p.numel() for p in params))


@dataclass
class EpochProgress:
    """Everything a half-done epoch has accumulated: saved in checkpoints so a resumed epoch ends
    with the same record as one that was never interrupted."""
    epoch: int
    plan: Plan
    before: list            # parameter values at the epoch's start (for params_updated_frac)
    emb: EmbarrassmentMeter
    next_batch: int = 0
    n_trained: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    flops_f: int = 0
    flops_b: int = 0
    throttled: float = 0.0
    wall_s: float = 0.0     # time spent before the last checkpoint (a resumed epoch adds to it)
    energy_j: float = 0.0   # likewise for joules
    last_loss: float | None = None
    carry: Batch | None = None   # a single planned row waiting to join the next step
    singles_dropped: int = 0     # single rows left over at the epoch's end (never trained)
    thermal_capped: int = 0      # thermal pauses cut short by the maximum pause
    steps: int = 0               # optimizer steps taken
    last_loss_t: torch.Tensor | None = None   # the last step's mean loss, still on the device
    replay_samples: int = 0      # anchor rows trained beside the local ones (--replay)
    flops_penalty: int = 0       # the objective's penalties, counted per weight entry (--ewc)
    flops_plan: int = 0          # the planner's trials before the first step (--sparsity budget), counted
    plan_s: float = 0.0          # of wall_s, the seconds planning took before the first step
    # Each trainable set the steps had (one 0/1 per parameter tensor) -> its largest step's rows.
    memory_steps: dict = field(default_factory=dict)

    def add_planning(self, *costs: dict | None) -> None:
        """A memory plan's (step_memory.py) and a default choice's (default_choice.py) measured time and
        joules and their trials' counted FLOPs: part of the first epoch's cost."""
        for cost in costs:
            cost = cost or {}
            planned = (cost.get("memory_plan_wall_s") or 0.0) + (cost.get("choice_wall_s") or 0.0)
            self.wall_s += planned
            self.plan_s += planned
            self.energy_j += (cost.get("memory_plan_energy_j") or 0.0) + (cost.get("choice_energy_j") or 0.0)
            self.flops_plan += (cost.get("memory_plan_trial_flops") or 0) + (cost.get("choice_flops") or 0)

    def to_state(self) -> dict:
        return {"epoch": self.epoch, "plan": {"positions": self.plan.positions.cpu(),
                                              "weights": None if self.plan.weights is None else self.plan.weights.cpu(),
                                              "info": self.plan.info},
                "before": [None if b is None else b.cpu() for b in self.before],
                "emb": (self.emb.sum.cpu(), self.emb.count.cpu()),
                "carry": None if self.carry is None else {k: None if v is None else v.cpu()
                                                          for k, v in vars(self.carry).items()},
                **{k: getattr(self, k) for k in ("next_batch", "n_trained", "loss_sum", "correct", "flops_f",
                                                 "flops_b", "throttled", "wall_s", "energy_j", "last_loss",
                                                 "singles_dropped", "thermal_capped", "steps", "replay_samples",
                                                 "flops_penalty", "flops_plan", "plan_s", "memory_steps")}}

    @classmethod
    def from_state(cls, d: dict, temperature: float, device) -> "EpochProgress":
        emb = EmbarrassmentMeter(len(d["emb"][0]), temperature, device)
        emb.sum.copy_(d["emb"][0])
        emb.count.copy_(d["emb"][1])
        plan = Plan(d["plan"]["positions"], d["plan"]["weights"], d["plan"]["info"])
        rest = {k: d[k] for k in ("next_batch", "n_trained", "loss_sum", "correct", "flops_f", "flops_b",
                                  "throttled", "wall_s", "energy_j", "last_loss")}
        carry = d.get("carry")
        carry = None if carry is None else Batch(**{k: None if v is None else v.to(device) for k, v in carry.items()})
        return cls(d["epoch"], plan, [None if b is None else b.to(device) for b in d["before"]], emb, **rest, carry=carry,
                   singles_dropped=d.get("singles_dropped", 0), thermal_capped=d.get("thermal_capped", 0),
                   steps=d.get("steps", 0), replay_samples=d.get("replay_samples", 0),
                   flops_penalty=d.get("flops_penalty", 0), flops_plan=d.get("flops_plan", 0), plan_s=d.get("plan_s", 0.0),
                   memory_steps=dict(d.get("memory_steps", {})))
