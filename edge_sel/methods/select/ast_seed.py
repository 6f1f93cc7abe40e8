"""The AST seed's Sundew gating, reproduced for the reference benchmark (presets ast-prod, ast-two).

Both seed recipes decide inside each batch from the current model's outputs, with the seed's
velocity-form PI loop and constants. What they compute is what we compute, and it is counted:
  ast-prod: one forward with a graph over the whole batch, the loss masked to the selected rows,
            a backward through the whole batch. Every sample costs a forward and a backward
            (records: forward_samples = backward_samples = all; `gate_activation` is the seed's
            "activation", the share of rows whose loss counts).
  ast-two:  a no-grad forward of the whole batch in training mode (counted as scoring), then a
            forward and backward of the selected rows only.
Selection: s = 0.7 CE + 0.3 H (raw); keep s > tau; below max(2, floor(min_share * B)) kept, keep the
top-scoring rows instead; then the controller update with the batch's rate.
"""

from __future__ import annotations

import math

import torch

from edge_sel.errors import InputError
from edge_sel.methods.base import RunContext, Strategy
from edge_sel.methods.select.gating_config import GatingConfig
from edge_sel.methods.select.significance import seed_significance
from edge_sel.methods.select.sundew import trace_summary
from edge_sel.methods.select.threshold_control import SeedVelocityPI

# KAGGLE_IMAGENET100_AST_PRODUCTION.py and KAGGLE_IMAGENET100_AST_TWO_STAGE_Prod.py of the AST repository
SEED_PROFILES = {
    "ast-prod": {"target": 0.40, "tau0": 3.0, "lo": 0.5, "hi": 10.0, "kp": 0.005, "ki": 1e-4, "alpha": 0.10,
                 "i_max": 100.0, "min_share": 0.10, "two_pass": False},
    "ast-two": {"target": 0.20, "tau0": 4.5, "lo": 0.5, "hi": 15.0, "kp": 0.008, "ki": 3e-4, "alpha": 0.15,
                "i_max": 100.0, "min_share": 0.05, "two_pass": True},
}


def seed_controller(profile: str, target: float | None = None) -> SeedVelocityPI:
    c = SEED_PROFILES[profile]
    return SeedVelocityPI(c["target"] if target is None else target, c["tau0"], c["kp"], c["ki"], c["alpha"],
                          c["lo"], c["hi"], c["i_max"])


def seed_mask(s: torch.Tensor, tau: float, min_share: float) -> torch.Tensor:
    """s > tau, or the top max(2, floor(min_share * B)) rows when fewer pass."""
    mask = s > tau
    least = min(len(s), max(2, math.floor(min_share * len(s))))
    if int(mask.sum()) < least:
        mask = torch.zeros_like(mask)
        mask[torch.topk(s, least).indices] = True
    return mask


class _RowGradScale(torch.autograd.Function):
    """Identity forward; backward scales row i's gradient by w_i. With the engine's mean over the
    batch this gives exactly the seed's gradient of sum(mask * loss) / max(sum(mask), 1)."""

    @staticmethod
    def forward(ctx, logits, w):
        ctx.save_for_backward(w)
        return logits.clone()

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * w.to(grad.dtype)[:, None], None


class SeedSundew(Strategy):
    def __init__(self, cfg: GatingConfig):
        if cfg.sundew_profile not in SEED_PROFILES:
            raise InputError(f"--preset: unknown Sundew seed profile {cfg.sundew_profile!r}")
        self.name = cfg.sundew_profile
        self.profile = SEED_PROFILES[cfg.sundew_profile]
        self.controller = seed_controller(cfg.sundew_profile, cfg.target_activation)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None   # (inputs, labels) of the next step
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.thresholds: list[float] = []
        self.selected = self.candidates = 0

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        if ctx.config.get("backend", "torch") != "torch":
            raise InputError(f"--preset {self.name}: reproduces an in-batch PyTorch recipe; use --backend torch")
        if not self.profile["two_pass"]:
            # A plain function (not a bound method): the FLOP counter deep-copies the model and its hooks.
            ctx.model.register_forward_hook(lambda module, inputs, output: self._mask_rows(inputs, output))

    def plan(self, epoch: int):
        self._reset_epoch()
        return super().plan(epoch)

    def _select(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tau = self.controller.tau
        mask = seed_mask(seed_significance(logits, labels), tau, self.profile["min_share"])
        self.thresholds.append(tau)
        self.selected += int(mask.sum())
        self.candidates += len(mask)
        self.controller.update(mask.float().mean().item())
        return mask

    def filter_batch(self, batch):
        if self.profile["two_pass"]:
            mask = self._select(self.ctx.forward_fn(batch.x), batch.y)
            keep = mask.nonzero().squeeze(1)
            w = None if batch.weight is None else batch.weight[keep]
            return type(batch)(batch.positions[keep], batch.index[keep], batch.x[keep], batch.y[keep], w)
        self._pending = (batch.x, batch.y)   # the forward hook masks this batch's rows
        return batch

    def _mask_rows(self, inputs, output):
        # Only the training step's own forward of this batch: not the FLOP counter's meta-device
        # twin (hooks are copied along), not an evaluation, not an updater's probe on other inputs.
        if self._pending is None or not inputs or inputs[0] is not self._pending[0] or not torch.is_grad_enabled():
            return None
        labels = self._pending[1]
        self._pending = None
        mask = self._select(output, labels)
        w = mask.float() * len(mask) / max(int(mask.sum()), 1)
        return _RowGradScale.apply(output, w)

    def end_epoch(self, epoch: int, metrics: dict) -> dict:
        return {"target_activation": self.controller.target,
                **trace_summary(self.thresholds, self.selected, self.candidates, self.controller.ema)}

    def state_dict(self) -> dict:
        return {"controller": self.controller.state_dict(), "thresholds": list(self.thresholds),
                "selected": self.selected, "candidates": self.candidates}

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.thresholds = list(state.get("thresholds", self.thresholds))
        self.selected = int(state.get("selected", self.selected))
        self.candidates = int(state.get("candidates", self.candidates))
