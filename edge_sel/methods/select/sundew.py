"""The Sundew gate: which samples an epoch computes, decided before any compute from stale hardness.

Each candidate of the strategy's plan gets a significance in [0, 1] from its last training visit
(never-trained samples score 1). Candidates are taken in plan order in windows of
`gate_window` batches; in each window a sample is kept with probability
sigmoid((s - tau) / temperature) (a hard threshold at temperature 0), with a top-significance
fallback below `min_activation`. After each window a positional PI controller moves tau so that the
activation rate tracks the target. Because a sample appears once per epoch, its significance when its
window comes up equals its significance at epoch start, so running the whole windowed loop inside
plan() is exactly the online loop, and a skipped sample costs no forward and no backward.

With `--novelty W` the significance is multiplied by (1 - W) + W x novelty (edge_sel.methods.select.
novelty): how unlike the frames kept recently a candidate is. Novelty depends on what was kept just
before, so inside a window candidates are decided one after another, each against the memory of kept
frames and the frames kept earlier in its window; the controller holds its target over this combined
significance. The fingerprints, every comparison and every pass of a window's decisions (the
threshold's bisection reruns them) are counted as scoring FLOPs.

The threshold's feed-forward part is set per epoch to the tau whose expected activation over the
epoch's candidates equals the target (ties and the keep floor included); the PI terms correct what
that guess misses (sampling noise, fallbacks, the drift a window sees).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edge_sel.methods.base import Gate, Plan, RunContext
from edge_sel.methods.select.energy_budget import ActivationTarget
from edge_sel.methods.select.gate_plans import keep_all, self_normalised, take
from edge_sel.methods.select.gating_config import GatingConfig, anneal_start
from edge_sel.methods.select.hardness import HardnessStore
from edge_sel.methods.select.novelty import NoveltyMemory, fingerprint_flops, fingerprints, print_dim
from edge_sel.methods.select.significance import SIGNIFICANCE
from edge_sel.methods.select.threshold_control import PositionalPI


def trace_summary(thresholds: list[float], kept: int, candidates: int, ema: float) -> dict:
    """Record fields summarising one epoch of the controller."""
    if not thresholds:
        return {"gate_activation": kept / candidates if candidates else None, "activation_ema": ema}
    return {"threshold_start": thresholds[0], "threshold_end": thresholds[-1],
            "threshold_mean": sum(thresholds) / len(thresholds),
            "threshold_min": min(thresholds), "threshold_max": max(thresholds),
            "activation_ema": ema, "gate_activation": kept / candidates if candidates else None,
            "gate_windows": len(thresholds)}


def decision_flops(candidates: int, kept: int, temperature: float, unbiased: bool) -> int:
    """One pass of a window's sequential decisions: per candidate its novelty (subtract, divide, two
    clips), its combined significance (multiply, add, multiply), its keep probability (subtract,
    divide, exp, add, divide with a temperature; one comparison without; a max with the floor when
    unbiased) and the comparison with its draw; per frame kept, the window's nearest similarities
    raised to its own (one comparison each)."""
    per_candidate = 4 + 3 + (5 if temperature > 0 else 1) + (1 if unbiased else 0) + 1
    return candidates * per_candidate + kept * candidates


def top_up_flops(candidates: int, kept_before: int, added: int) -> int:
    """A window's top-up: the nearest similarities raised to each frame kept before (one comparison
    each), then per frame added every candidate's novelty (4) and score (3), the argmax (1) and the
    raise to the added frame (1)."""
    return kept_before * candidates + added * candidates * (4 + 3 + 1 + 1)


class SundewGate(Gate):
    name = "sundew"

    def __init__(self, cfg: GatingConfig):
        self.cfg = cfg
        self.target = ActivationTarget(cfg.target_activation, cfg.energy_budget_per_epoch)
        self.controller = PositionalPI(cfg.target_activation, tau0=1 - cfg.target_activation)
        self.significance = SIGNIFICANCE[cfg.significance]
        self.candidates = 0

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.store = HardnessStore(ctx.train.index, ctx.train.num_classes, gamma=self.cfg.dih_gamma)
        self.anneal_from = anneal_start(ctx.epochs, self.cfg.anneal_or(0.0))
        self.memory = NoveltyMemory(print_dim(ctx.train.input_shape), self.cfg.novelty_memory) \
            if self.cfg.novelty > 0 else None

    def select(self, epoch: int, plan: Plan) -> Plan:
        cands = plan.positions
        n = self.candidates = len(cands)
        target = self.target.value
        if epoch >= self.anneal_from or n == 0 or target >= 1.0:   # nothing to gate
            return keep_all(plan, {"target_activation": target, "gate_activation": 1.0 if n else None,
                                   "annealing": epoch >= self.anneal_from})
        sig = self.significance(self.store)[cands.to(self.store.device)].float().cpu()
        never = ~self.store.seen[cands.to(self.store.device)].cpu()
        unseen = never.float().mean().item()
        if self.cfg.unseen == "neutral" and not never.all():
            # A never-trained sample is worth what an average seen one is: neither first nor last.
            sig[never] = sig[~never].mean()
        prints, info = None, {}
        if self.memory is not None:
            prints = fingerprints(self.ctx.train.pixels(cands.to(self.ctx.train.images.device)))
            self.novelty_flops = fingerprint_flops(n, self.ctx.train.input_shape)
        keep, prob, thresholds = self._gate(sig, target, prints)
        kept = keep.nonzero().squeeze(1)
        if prints is not None:
            charge = getattr(self.ctx, "charge_fn", None)
            if charge is not None:
                charge(0, self.novelty_flops)
            info = {"novelty_flops": self.novelty_flops, "novelty_kept_mean": self.novelty_kept_mean}
        weights = self_normalised(1 / prob[kept]) if self.cfg.unbiased else None
        info = {"target_activation": target, "unseen_share": unseen, **info,
                **trace_summary(thresholds, len(kept), n, self.controller.ema)}
        return take(plan, kept, weights, info)

    def keep_probability(self, sig: torch.Tensor, tau: float) -> torch.Tensor:
        cfg = self.cfg
        p = torch.sigmoid((sig - tau) / cfg.gate_temperature) if cfg.gate_temperature > 0 else (sig > tau).float()
        return p.clamp_min(cfg.keep_floor) if cfg.unbiased else p

    def feed_forward(self, sig: torch.Tensor, target: float) -> float:
        """The threshold whose expected activation over `sig` is the target (bisection: the expected
        activation falls monotonically as tau rises)."""
        lo, hi = self.controller.lo, self.controller.hi
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.keep_probability(sig, mid).mean().item() > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def _gate(self, sig: torch.Tensor, target: float,
              prints: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """The windowed control loop over one epoch's candidates (in plan order); with `prints` the
        candidates' novelty multiplies their significance."""
        cfg, n = self.cfg, len(sig)
        ctl = self.controller
        ctl.target = target
        window = cfg.gate_window * self.ctx.batch_size
        if prints is None:      # with novelty the guess is made per window (it depends on the memory then)
            ctl.set_bias(self.feed_forward(sig, target))
        draws = torch.rand(n, generator=self.ctx.generator)
        keep = torch.zeros(n, dtype=torch.bool)
        prob = torch.ones(n)
        thresholds = []
        kept_novelty = []
        for lo in range(0, n, window):
            s = sig[lo: lo + window]
            if prints is None:
                tau = ctl.tau
                p = self.keep_probability(s, tau)
                k = draws[lo: lo + window] < p
            else:
                tau, k, p, s, novelty = self._novel_window(s, prints[lo: lo + window], draws[lo: lo + window],
                                                           target)
            # The floor never asks for more than the target's share: at a target at or below
            # --min-activation a rounded-up floor kept more than the target in every window.
            floor = min(math.ceil(cfg.min_activation * len(s)), math.floor(target * len(s)))
            if int(k.sum()) < floor:
                if prints is None:
                    # Minimum-activation fallback: the most significant samples of the window.
                    k[torch.topk(s, floor).indices] = True
                else:
                    # ... and with novelty, one at a time, each against what is kept: the top
                    # samples alone would be frames of one hard scene.
                    k = self._top_up(sig[lo: lo + window], k, floor)
            keep[lo: lo + window], prob[lo: lo + window] = k, p.clamp_min(1e-6)
            if prints is not None:
                self.memory.remember(prints[lo: lo + window][k])
                kept_novelty.append(novelty[k])
            thresholds.append(tau)
            ctl.update(k.float().mean().item())
        if prints is not None:
            self.novelty_kept_mean = torch.cat(kept_novelty).mean().item() if keep.any() else None
        return keep, prob, thresholds

    def _top_up(self, sig: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
        """`keep` with the window's most significant candidates added until `count` are kept, their
        novelty updated after each from the similarities the window's decisions computed."""
        near, cos = self._window
        keep = keep.clone()
        best = near.clone()
        self.novelty_flops += top_up_flops(len(sig), int(keep.sum()), count - int(keep.sum()))
        for i in keep.nonzero().squeeze(1).tolist():
            best = torch.maximum(best, cos[i])
        while int(keep.sum()) < count:
            novelty = ((1 - best) / self.cfg.novelty_radius).clamp(0, 1)
            score = (sig * self._factor(novelty)).masked_fill(keep, -math.inf)
            j = int(torch.argmax(score))
            keep[j] = True
            best = torch.maximum(best, cos[j])
        return keep

    def _factor(self, novelty: torch.Tensor) -> torch.Tensor:
        return (1 - self.cfg.novelty) + self.cfg.novelty * novelty

    def _novel_window(self, sig: torch.Tensor, prints: torch.Tensor, draws: torch.Tensor, target: float):
        """One window decided candidate by candidate, each against the memory of kept frames and the
        frames kept earlier in its window. Keeping a frame makes its scene-mates redundant, so the
        share kept is not a function of each candidate alone: the feed-forward part of the threshold
        is found by bisection on the window's own decisions (its candidates are known at planning
        time, as the epoch's are for the plain feed-forward); the PI terms correct what remains.
        Returns (tau, keep, keep probability, combined significance, novelty)."""
        near, flops = self.memory.nearest(prints)
        cos = prints @ prints.T
        self.novelty_flops += flops + 2 * len(prints) * len(prints) * prints.shape[1]
        self._window = (near, cos)          # a top-up reuses them
        near_np, cos_np = near.numpy().astype(np.float64), cos.numpy().astype(np.float64)
        s_np, d_np = sig.numpy().astype(np.float64), draws.numpy()
        ctl = self.controller

        def lowest(meets) -> float:
            """The lowest threshold at which `meets(share kept)` holds (the share falls as tau rises)."""
            lo, hi = ctl.lo, ctl.hi
            for _ in range(16):
                mid = (lo + hi) / 2
                if meets(self._decide(s_np, near_np, cos_np, d_np, mid)[0].mean()):
                    hi = mid
                else:
                    lo = mid
            return hi

        # The middle of the thresholds that keep the target share (not an edge of it, where a
        # rounding error in a cosine would decide).
        ctl.set_bias((lowest(lambda share: share <= target) + lowest(lambda share: share < target)) / 2)
        tau = ctl.tau
        keep, novelty, p = self._decide(s_np, near_np, cos_np, d_np, tau)
        novelty_t = torch.from_numpy(novelty).float()
        return tau, torch.from_numpy(keep), torch.from_numpy(p).float(), sig * self._factor(novelty_t), novelty_t

    def _decide(self, sig: np.ndarray, near: np.ndarray, cos: np.ndarray, draws: np.ndarray, tau: float):
        """The window's sequential decisions at threshold tau: (keep, novelty, keep probability)."""
        best = near.copy()
        w, weight, radius = len(sig), self.cfg.novelty, self.cfg.novelty_radius
        keep, novelty, p = np.zeros(w, dtype=bool), np.empty(w), np.empty(w)
        for i in range(w):
            novelty[i] = min(1.0, max(0.0, (1 - best[i]) / radius))
            p[i] = self._probability_scalar(sig[i] * ((1 - weight) + weight * novelty[i]), tau)
            if draws[i] < p[i]:
                keep[i] = True
                np.maximum(best, cos[i], out=best)
        # Every pass is counted: the bisection runs about 33 of them per window.
        self.novelty_flops += decision_flops(w, int(keep.sum()), self.cfg.gate_temperature, self.cfg.unbiased)
        return keep, novelty, p

    def _probability_scalar(self, s: float, tau: float) -> float:
        cfg = self.cfg
        if cfg.gate_temperature > 0:
            z = (s - tau) / cfg.gate_temperature
            p = 1 / (1 + math.exp(-z)) if z > -60 else 0.0
        else:
            p = float(s > tau)
        return max(p, cfg.keep_floor) if cfg.unbiased else p

    def observe(self, batch, losses, logits) -> None:
        self.store.observe(batch.index, losses, logits, batch.y, self.ctx.state.get("epoch", 0),
                           self.ctx.state.get("lr", 0.0))

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        return self.target.after_epoch(metrics, self.candidates)

    def state_dict(self) -> dict:
        state = {"store": self.store.state_dict(), "controller": self.controller.state_dict(),
                 "target": self.target.state_dict(), "candidates": self.candidates}
        if self.memory is not None:
            state["novelty_memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state["store"])
        self.controller.load_state_dict(state["controller"])
        self.target.load_state_dict(state["target"])
        # The epoch's candidate count sets the next target under --energy-budget-per-epoch.
        self.candidates = int(state.get("candidates", self.candidates))
        if self.memory is not None and "novelty_memory" in state:
            self.memory.load_state_dict(state["novelty_memory"])
