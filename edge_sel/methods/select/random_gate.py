"""The control for every gated result: candidates chosen uniformly at random at the same activation
(fixed target or the same joule budget), on the same schedule and learning-rate schedule."""

from __future__ import annotations

import torch

from edge_sel.methods.base import Gate, Plan, RunContext
from edge_sel.methods.select.energy_budget import ActivationTarget
from edge_sel.methods.select.gate_plans import keep_all, take
from edge_sel.methods.select.gating_config import GatingConfig, anneal_start


class RandomGate(Gate):
    name = "random"

    def __init__(self, cfg: GatingConfig):
        self.cfg = cfg
        self.target = ActivationTarget(cfg.target_activation, cfg.energy_budget_per_epoch)
        self.candidates = 0

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.anneal_from = anneal_start(ctx.epochs, self.cfg.anneal_or(0.0))

    def select(self, epoch: int, plan: Plan) -> Plan:
        n = self.candidates = len(plan.positions)
        target = self.target.value
        if epoch >= self.anneal_from or n == 0:
            return keep_all(plan, {"target_activation": target, "gate_activation": 1.0 if n else None,
                                   "annealing": epoch >= self.anneal_from})
        k = min(n, max(1, round(target * n)))
        # Sorted so the kept samples keep the strategy's order (a curriculum's order survives).
        kept = torch.randperm(n, generator=self.ctx.generator)[:k].sort().values
        return take(plan, kept, None, {"target_activation": target, "gate_activation": k / n})

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        return self.target.after_epoch(metrics, self.candidates)

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.target.load_state_dict(state["target"])
