"""InfoBatch (Qin et al., ICLR 2024): unbiased dynamic pruning on free, stale scores.

Score = the loss of the sample's last training visit. Each epoch, a random `prune_ratio` of the
samples scoring below the mean is skipped; the kept below-mean samples weigh 1 / (1 - prune_ratio),
so the expected gradient matches the full data's. The last `anneal` share of epochs uses all data.

Epoch-0 pitfall (InfoBatch issue #25): with every score at its initial value the "below the mean"
test is degenerate. Here a sample never trained in this run is never "well learned": it is always
kept at weight 1, and the mean is taken over trained samples only, so epoch 0 is a full epoch."""

from __future__ import annotations

import torch

from edge_sel.methods.base import Gate, Plan, RunContext
from edge_sel.methods.select.gate_plans import keep_all, take
from edge_sel.methods.select.gating_config import GatingConfig, anneal_start
from edge_sel.methods.select.hardness import HardnessStore

DEFAULT_ANNEAL = 0.125


class InfoBatchGate(Gate):
    name = "infobatch"

    def __init__(self, cfg: GatingConfig):
        self.cfg = cfg

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.store = HardnessStore(ctx.train.index, ctx.train.num_classes)
        self.anneal_from = anneal_start(ctx.epochs, self.cfg.anneal_or(DEFAULT_ANNEAL))

    def select(self, epoch: int, plan: Plan) -> Plan:
        cands = plan.positions
        n = len(cands)
        if epoch >= self.anneal_from or n == 0:
            return keep_all(plan, {"gate_activation": 1.0 if n else None, "annealing": epoch >= self.anneal_from})
        slots = cands.to(self.store.device)
        seen = self.store.seen[slots].cpu()
        score = self.store.last_loss[slots].float().cpu()
        well = torch.zeros(n, dtype=torch.bool)
        if seen.any():
            well = seen & (score < score[seen].mean())
        drop = well & (torch.rand(n, generator=self.ctx.generator) < self.cfg.prune_ratio)
        kept = (~drop).nonzero().squeeze(1)
        weights = torch.where(well[kept], 1 / (1 - self.cfg.prune_ratio), 1.0)
        return take(plan, kept, weights, {"gate_activation": len(kept) / n,
                                          "well_learned_share": well.float().mean().item(),
                                          "unseen_share": 1 - seen.float().mean().item()})

    def observe(self, batch, losses, logits) -> None:
        self.store.observe(batch.index, losses, logits, batch.y, self.ctx.state.get("epoch", 0),
                           self.ctx.state.get("lr", 0.0))

    def state_dict(self) -> dict:
        return {"store": self.store.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state["store"])
