"""Sparse updates: which parameters change each step.

`mask` (SEL's guilt mask): after a full backward pass, gradient entries with |grad| <= g_s are
zeroed and those entries (and their optimizer state) are restored after the step, so they stay
bit-identical. The backward pass has already run: this is update sparsity and saves no compute.

`layers` (structured): every K steps a dense probe step measures each block's guilt,
||grad|| / ||weight||; until the next probe the least guilty blocks are frozen with
requires_grad=False, so autograd never computes their weight gradients, and a frozen prefix
skips its backward pass entirely. The engine counts the smaller backward graph.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_sel.device_caps import accumulator_dtype
from edge_sel.errors import InputError
from edge_sel.methods.base import RunContext, Updater
from edge_sel.methods.update.guilt import calibrate, stage_threshold
from edge_sel.models import untrained_twin
from edge_sel.models.blocks import model_blocks


def curriculum_stage(ctx: RunContext) -> tuple[int | None, int, bool]:
    """(stage number, curriculum stage count, dense stage?) as published by the strategy in
    ctx.state; a strategy without stages reads as stage 1 of 5 (g_s = g0)."""
    state = ctx.state
    return state.get("stage"), int(state.get("curriculum_stages") or 5), bool(state.get("stage_dense"))


class GuiltMask(Updater):
    name = "mask"
    saves_compute = False

    def __init__(self, percentile: float = 40.0, decay: float = 0.3, samples: int = 128,
                 calibration_model: str = "warmup"):
        self.q, self.decay, self.samples, self.calibration_model = percentile, decay, samples, calibration_model
        self.g0: float | None = None
        self._saved = None
        self._calibration: dict | None = None

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        self._reset_epoch()

    def before_step(self, step: int, batch) -> None:
        if self.g0 is None:
            # Calibrated at the first step (the model is still the warmup checkpoint), inside the
            # epoch's time and energy window; its FLOPs go to the first record.
            seed = int(self.ctx.config.get("seed", 0))
            model = self.model
            source = untrained_twin(model, seed + 101) if self.calibration_model == "cold" else model
            self._calibration = calibrate(source, self.ctx, self.samples, self.q, seed + 1)
            self.g0 = self._calibration["g0"]

    def _reset_epoch(self) -> None:
        self._share_sum = torch.zeros((), dtype=accumulator_dtype(self.ctx.device), device=self.ctx.device)
        self._steps = 0

    def threshold(self) -> float | None:
        if self.g0 is None:
            return None
        stage, stages, _ = curriculum_stage(self.ctx)
        return stage_threshold(self.g0, max(0, (stage or 1) - 1), self.decay, stages)

    def after_backward(self, step: int) -> None:
        self._steps += 1
        self._saved = None
        if curriculum_stage(self.ctx)[2]:
            return                                   # dense warmup stage: nothing masked
        g = self.threshold()
        saved, masked, total = [], torch.zeros((), device=self.ctx.device), 0
        for p in self.model.parameters():
            if p.grad is None:
                continue
            keep = p.grad.abs() > g
            p.grad.mul_(keep)
            masked = masked + (~keep).sum()
            total += p.numel()
            # Snapshot what the step may move: the entries themselves and their optimizer state
            # (Adam's moments, SGD's momentum), so masked entries really stay put.
            state = {k: v.clone() for k, v in self.optimizer.state.get(p, {}).items()
                     if torch.is_tensor(v) and v.shape == p.shape}
            saved.append((p, keep, p.detach().clone(), state))
        self._saved = saved
        self._share_sum += masked / max(1, total)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        for p, keep, old, state in self._saved or []:
            p.copy_(torch.where(keep, p, old))
            current = self.optimizer.state.get(p, {})
            for k, v in current.items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    # State created by this very step started at zero for masked entries.
                    before = state.get(k, torch.zeros_like(v))
                    v.copy_(torch.where(keep, v, before))
        self._saved = None

    def end_epoch(self) -> dict:
        out = {"grad_sparsity": self._share_sum.item() / self._steps if self._steps else 0.0,
               "sparsity_kind": "update", "compute_saved_by_sparsity": False,
               "guilt_g0": self.g0, "guilt_threshold": self.threshold()}
        if self._calibration is not None:
            # Charged once, to the first epoch's record (and through it, to flops_train).
            out.update(flops_calibration=self._calibration["flops"],
                       calibration_samples=self._calibration["samples"],
                       guilt_calibration_model=self.calibration_model)
            self._calibration = None
        self._reset_epoch()
        return out

    def state_dict(self) -> dict:
        """Everything a resumed epoch needs to end with the same record: g0, the calibration not
        yet charged to a record, and the epoch's running sums."""
        return {"g0": self.g0, "calibration": self._calibration, "share_sum": self._share_sum.detach().cpu(),
                "steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        self.g0 = state.get("g0", self.g0)
        self._calibration = state.get("calibration")
        if "share_sum" in state:
            self._share_sum = state["share_sum"].to(self._share_sum.device, self._share_sum.dtype)
            self._steps = int(state["steps"])


def block_guilt(blocks: list[list[nn.Parameter]]) -> list[float | None]:
    """||grad|| / ||weight|| per block (None for a block without parameters or gradients)."""
    ratios = []
    for params in blocks:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            ratios.append(None)
            continue
        g = torch.sqrt(sum((x.float() ** 2).sum() for x in grads))
        w = torch.sqrt(sum((p.detach().float() ** 2).sum() for p in params))
        ratios.append(g / (w + 1e-12))
    values = [r for r in ratios if r is not None]
    flat = torch.stack(values).tolist() if values else []   # one host sync per probe
    it = iter(flat)
    return [None if r is None else next(it) for r in ratios]


def choose_frozen(guilt: list[float | None], sizes: list[int], target: float, total: int,
                  tie: float = 0.1) -> list[int]:
    """Blocks to freeze: least guilty first while the frozen share of parameters stays <= target.

    Blocks whose guilt lies within `tie` (10%) of the least guilty of their group count as tied,
    and the earlier block goes first: only a frozen prefix also removes input-gradient work.
    The most guilty block always trains."""
    candidates = [i for i, g in enumerate(guilt) if g is not None and sizes[i] > 0]
    if len(candidates) < 2:
        return []
    most = max(candidates, key=lambda i: (guilt[i], -i))
    groups: list[list[int]] = []
    for i in sorted(candidates, key=lambda i: (guilt[i], i)):
        if groups and guilt[i] <= guilt[groups[-1][0]] * (1 + tie):
            groups[-1].append(i)
        else:
            groups.append([i])
    budget = target * total
    frozen, used = [], 0
    for i in (i for group in groups for i in sorted(group)):
        if i != most and used + sizes[i] <= budget:
            frozen.append(i)
            used += sizes[i]
    return sorted(frozen)


def parse_block_names(value) -> list[str] | None:
    """--blocks: comma-separated module names (a list from a config file is taken as it is)."""
    if value is None:
        return None
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"--blocks: expected comma-separated module names, got {value!r}")
    return names


class LayerFreeze(Updater):
    name = "layers"
    saves_compute = True

    def __init__(self, target: float = 0.5, probe_every: int = 50, block_names: list[str] | None = None):
        self.target, self.probe_every = target, probe_every
        self.block_names = block_names          # --blocks; None: models.blocks' rule
        self.frozen: list[int] = []
        self.last_guilt: list[float | None] = []
        self._probing = False

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        self.blocks = [list(b.parameters()) for b in model_blocks(model, self.block_names)]
        self.sizes = [sum(p.numel() for p in ps) for ps in self.blocks]
        self.total = sum(p.numel() for p in model.parameters())
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._steps = self._probes = 0
        self._frozen_sum = 0.0

    def _frozen_share(self) -> float:
        return sum(self.sizes[i] for i in self.frozen) / max(1, self.total)

    def _apply(self, frozen: list[int]) -> None:
        self.frozen = frozen
        for i, params in enumerate(self.blocks):
            for p in params:
                p.requires_grad_(i not in frozen)
                if i in frozen:
                    p.grad = None      # the optimizer skips a parameter whose grad is None

    def before_step(self, step: int, batch) -> None:
        self._probing = step % self.probe_every == 0
        if self._probing:
            self._apply([])               # the probe is a full dense step
            self._probes += 1
        self._steps += 1
        self._frozen_sum += self._frozen_share()

    def after_backward(self, step: int) -> None:
        if self._probing:
            self.last_guilt = block_guilt(self.blocks)

    def after_step(self, step: int) -> None:
        if self._probing:
            self._apply(choose_frozen(self.last_guilt, self.sizes, self.target, self.total))
            self._probing = False

    def end_epoch(self) -> dict:
        share = self._frozen_sum / self._steps if self._steps else 0.0
        out = {"grad_sparsity": share, "frozen_frac": share, "sparsity_kind": "structured",
               "compute_saved_by_sparsity": True, "probe_steps": self._probes,
               "frozen_blocks": list(self.frozen),
               "block_guilt": [None if g is None else round(g, 6) for g in self.last_guilt]}
        self._reset_epoch()
        return out

    def state_dict(self) -> dict:
        return {"frozen": list(self.frozen), "last_guilt": list(self.last_guilt), "steps": self._steps,
                "probes": self._probes, "frozen_sum": self._frozen_sum}

    def load_state_dict(self, state: dict) -> None:
        self._apply(list(state.get("frozen", [])))
        self.last_guilt = list(state.get("last_guilt", self.last_guilt))
        self._steps = int(state.get("steps", self._steps))
        self._probes = int(state.get("probes", self._probes))
        self._frozen_sum = float(state.get("frozen_sum", self._frozen_sum))
