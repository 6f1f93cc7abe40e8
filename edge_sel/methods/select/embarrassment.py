"""Per-class embarrassment as a control signal: each class's share of an epoch's sample budget
follows its embarrassment E_c (the engine's per-class CE at temperature T on the training
forward pass of the previous epoch), above a floor so no class starves.

    share_c = floor + (1 - K * floor) * E_c / sum_k E_k

The budget (how many samples the epoch computes) is the wrapped strategy's own: focus moves
samples between classes, never adds compute. A class whose quota exceeds what the plan offers
for it repeats samples (each at most ceil(quota / available) times)."""

from __future__ import annotations

import torch

from edge_sel.data import Batch
from edge_sel.errors import InputError
from edge_sel.methods.base import Plan, Strategy


def class_shares(embarrassment: list[float | None], floor: float) -> list[float]:
    """Budget shares per class; classes without a value get the mean of the others."""
    k = len(embarrassment)
    known = [e for e in embarrassment if e is not None]
    fill = sum(known) / len(known) if known else 1.0
    e = [max(0.0, fill if v is None else v) for v in embarrassment]
    total = sum(e)
    rest = max(0.0, 1.0 - k * floor)
    if total <= 0:
        return [1.0 / k] * k
    return [floor + rest * v / total for v in e]


def quotas(shares: list[float], budget: int) -> list[int]:
    """Integer sample counts summing to `budget` (largest remainder, ties to the lower class)."""
    raw = [s * budget for s in shares]
    out = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda c: (-(raw[c] - out[c]), c))
    for c in order[: budget - sum(out)]:
        out[c] += 1
    return out


def take(pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n positions from `pool`: a random order of it, cycled if n exceeds its size."""
    if n <= 0 or len(pool) == 0:
        return pool[:0]
    reps = -(-n // len(pool))
    parts = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(reps)]
    return torch.cat(parts)[:n]


class ClassFocus(Strategy):
    """Wraps a strategy and re-divides its plan between classes by embarrassment."""

    def __init__(self, base: Strategy, floor: float | None = None):
        self.base = base
        self.floor = floor
        self.name = f"{base.name}+focus"
        self.embarrassment: list[float | None] | None = None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.base.setup(ctx)
        k = ctx.train.num_classes
        self.floor_share = 0.5 / k if self.floor is None else self.floor
        if self.floor_share * k > 1:
            raise InputError(f"--class-focus-floor {self.floor}: {k} classes can each get at most 1/{k} "
                             f"= {1 / k:.4f} of the epoch")

    def plan(self, epoch: int) -> Plan:
        plan = self.base.plan(epoch)
        labels = self.ctx.train.labels.to(plan.positions.device)[plan.positions]
        k = self.ctx.train.num_classes
        if self.embarrassment is None:   # no signal before the first epoch: the plan as it is
            counts = torch.bincount(labels.cpu(), minlength=k).tolist()
            return Plan(plan.positions, plan.weights, {**plan.info, "class_budget": counts})
        offered = [c for c in range(k) if (labels == c).any()]
        shares = class_shares([self.embarrassment[c] for c in offered], self.floor_share)
        counts = dict(zip(offered, quotas(shares, len(plan.positions))))
        g = torch.Generator().manual_seed(int(self.ctx.config.get("seed", 0)) * 7919 + epoch)
        picks = []
        for c in offered:
            picks.append(take((labels == c).nonzero().flatten().cpu(), counts[c], g))
        order = torch.cat(picks)
        order = order[torch.randperm(len(order), generator=g)].to(plan.positions.device)
        weights = None if plan.weights is None else plan.weights[order]
        info = {**plan.info, "class_budget": [counts.get(c, 0) for c in range(k)]}
        return Plan(plan.positions[order], weights, info)

    def observe(self, batch: Batch, losses, logits) -> None:
        self.base.observe(batch, losses, logits)

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        out = self.base.end_epoch(epoch, metrics)
        self.embarrassment = [metrics.get(f"E_{name}") for name in self.ctx.train.class_names]
        return out

    def lr_scale(self, batch_loss) -> float:
        return self.base.lr_scale(batch_loss)

    def finished(self) -> bool:
        return self.base.finished()

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "embarrassment": self.embarrassment}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state.get("base", {}))
        self.embarrassment = state.get("embarrassment")
