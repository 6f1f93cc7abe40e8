"""DIHCL (Zhou, Wang, Bilmes, NeurIPS 2020): curriculum by dynamic instance hardness.

DIH r <- gamma * a + (1 - gamma) * r for trained samples only (Eq. 1), with the instantaneous
hardness a = loss / lr, |loss change| / sum(lr since last visit) or prediction flip / sum(lr)
(Eq. 2): the free by-products of the training forward pass. Warm start: all candidates for
`dih_warm` epochs; then a subset of share max(shrink^(e - warm + 1), floor), chosen
  greedy: the top-k by r (Algorithm 1);
  rand:   drawn without replacement with p proportional to r;
  exp:    p proportional to exp(sqrt(2 ln n / n) * r), observations weighted by 1 / inclusion
          probability (the EXP3 correction of section 3.3, capped at 10x);
  beta:   Thompson draws u ~ Beta(1 + v r~, 1 + v (1 - r~)), r~ = r / max r, v = DIH updates; top-k by u.
Samples without a DIH yet (never trained, or trained once for the change signals) rank first.
The chosen subset is trained in random order (the public code trains in draw order, hardest first).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edge_sel.methods.base import Gate, Plan, RunContext
from edge_sel.methods.select.gate_plans import keep_all, take
from edge_sel.methods.select.gating_config import GatingConfig
from edge_sel.methods.select.hardness import HardnessStore

MIN_INCLUSION = 0.1


class DihclGate(Gate):
    name = "dihcl"

    def __init__(self, cfg: GatingConfig):
        self.cfg = cfg
        self._inclusion: torch.Tensor | None = None   # per training position, this epoch (exp only)

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.store = HardnessStore(ctx.train.index, ctx.train.num_classes, gamma=self.cfg.dih_gamma,
                                   signal=self.cfg.dih_signal, lr_normalised=True)

    def subset_share(self, epoch: int) -> float:
        if epoch < self.cfg.dih_warm:
            return 1.0
        return max(self.cfg.dih_shrink ** (epoch - self.cfg.dih_warm + 1), self.cfg.dih_floor)

    def select(self, epoch: int, plan: Plan) -> Plan:
        cands = plan.positions
        n = len(cands)
        share = self.subset_share(epoch)
        self._inclusion = None
        slots = cands.to(self.store.device)
        known = self.store.dih_known[slots].cpu()
        info = {"subset_share": share, "dih_unknown_share": 1 - known.float().mean().item() if n else None}
        if share >= 1.0 or n == 0:
            return keep_all(plan, {**info, "gate_activation": 1.0 if n else None})
        k = max(1, round(share * n))
        r = self.store.dih[slots].float().cpu()
        chosen, inclusion = self._choose(r, known, self.store.dih_updates[slots].cpu(), k)
        if inclusion is not None:
            self._inclusion = torch.ones(len(self.store))
            self._inclusion[cands[chosen].cpu()] = inclusion
        chosen = chosen[torch.randperm(len(chosen), generator=self.ctx.generator)]
        info["dih_mean"] = r[known].mean().item() if known.any() else None
        return take(plan, chosen, None, {**info, "gate_activation": len(chosen) / n})

    def _choose(self, r: torch.Tensor, known: torch.Tensor, updates: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Indices of k candidates, and (exp only) their inclusion probabilities."""
        g, n = self.ctx.generator, len(r)
        top = r[known].max().item() if known.any() else 1.0
        filled = torch.where(known, r, torch.full_like(r, top)).clamp_min(0)
        variant = self.cfg.dih_select
        if variant == "greedy":
            # Unknown samples rank above every known one; random keys break ties among them.
            key = torch.where(known, r, top + 1 + torch.rand(n, generator=g))
            return torch.topk(key, k).indices, None
        if variant == "beta":
            rel = filled / max(top, 1e-12)
            v = updates.float()
            rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g)))
            u = torch.from_numpy(rng.beta((1 + v * rel).numpy(), (1 + v * (1 - rel)).numpy())).float()
            u = torch.where(known, u, 1 + torch.rand(n, generator=g))
            return torch.topk(u, k).indices, None
        if variant == "rand":
            p = filled + 1e-12
        else:  # exp
            eta = math.sqrt(2 * math.log(max(n, 2)) / n)
            p = torch.exp(eta * (filled - filled.max()))
        p = p / p.sum()
        chosen = torch.multinomial(p, k, replacement=False, generator=g)
        # Importance weights 1/inclusion are capped at 1/MIN_INCLUSION: uncapped, one rarely drawn sample's
        # DIH can jump by orders of magnitude and turn the softmax into a one-hot draw.
        inclusion = (k * p[chosen]).clamp(MIN_INCLUSION, 1.0) if variant == "exp" else None
        return chosen, inclusion

    def observe(self, batch, losses, logits) -> None:
        weight = None
        if self._inclusion is not None:
            weight = 1 / self._inclusion.to(self.store.device)[batch.positions.to(self.store.device)]
        self.store.observe(batch.index, losses, logits, batch.y, self.ctx.state.get("epoch", 0),
                           self.ctx.state.get("lr", 0.0), weight)

    def state_dict(self) -> dict:
        return {"store": self.store.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state["store"])
