"""The default backend: eager PyTorch forward, backward and optimizer step, in the run's precision."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from edge_sel.core.micro_batches import bounds
from edge_sel.data import Batch
from edge_sel.device_caps import PRECISION_DTYPES, amp_dtype, grad_scaler
from edge_sel.methods import Updater
from edge_sel.methods.objective import Objective


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(name)


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """BatchNorm in eval mode inside a training step: normalise with the running statistics and
    leave them unchanged (scale and shift still train). Matches ORT artifacts exported that way."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class TorchBackend:
    name = "torch"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, updater: Updater,
                 device: torch.device, amp: bool = True, label_smoothing: float = 0.0,
                 bn_mode: str | None = None, compile: bool = False, precision: tuple[str, str] | None = None,
                 objective: Objective | None = None):
        self.model, self.optimizer, self.updater = model, optimizer, updater
        # What a step minimises (methods/objective.py); plain cross-entropy unless penalties are given.
        self.objective = objective or Objective(label_smoothing)
        # torch.compile compiles on the first call of each mode (train, eval): inside the first
        # epoch's and the first evaluation's measured windows, where its cost belongs.
        self.forward = torch.compile(model) if compile else model
        self.device = device
        self.label_smoothing = label_smoothing
        self.bn_mode = bn_mode or "train"
        # `precision`: the run's (training, forward-only) choice from engine.precision; without it,
        # `amp` means CUDA's mixed precision as before, the same for both.
        if precision is not None:
            self.amp_dtype, self.eval_dtype = (PRECISION_DTYPES[p] for p in precision)
        else:
            self.amp_dtype = amp_dtype(device) if amp and device.type == "cuda" else None
            self.eval_dtype = self.amp_dtype
        # fp16 needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = grad_scaler() if self.amp_dtype == torch.float16 else None
        self.micro_batch = 0        # a memory plan's micro-batch (engine/machine/memory_plan.py); 0: whole batches

    def _autocast(self, dtype: torch.dtype | None = None):
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)     # per-block rates (Auto-RGN)

    def train_step(self, step: int, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on the batch; returns detached per-sample losses and logits. With `micro_batch`
        set below the batch's size, the batch runs in near-even slices of at most that many rows whose
        gradients add up to the whole batch's (each slice's loss is its share of the batch mean) before
        the one optimizer step."""
        self.model.train()
        if self.bn_mode == "eval":
            freeze_batchnorm_stats(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        n = len(batch.y)
        if not self.micro_batch or self.micro_batch >= n:
            losses, logits, loss = self._forward(batch.x, batch.y, batch.weight, n, whole=True)
            stepped = self._backward(loss)
        else:
            parts, stepped = [], False
            for lo, hi in bounds(n, self.micro_batch):
                rows = slice(lo, hi)
                weight = None if batch.weight is None else batch.weight[rows]
                part_losses, part_logits, loss = self._forward(batch.x[rows], batch.y[rows], weight, n,
                                                               whole=lo == 0)
                stepped = self._backward(loss) or stepped
                parts.append((part_losses.detach(), part_logits.detach()))
            losses, logits = (torch.cat(t) for t in zip(*parts))
        if stepped:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)      # once, after every slice's backward
            self.updater.after_backward(step)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.updater.after_step(step)
        return losses.detach(), logits.detach().float()

    def _forward(self, x, y, weight, n: int, whole: bool):
        """Per-sample losses, logits and the loss to differentiate: the batch mean when `x` is the
        whole batch, else this slice's sum over the batch's size `n`; the penalty on the weights
        once per step (with the first slice)."""
        with self._autocast(self.amp_dtype):
            logits = self.forward(x)
            losses = self.objective.losses(logits.float(), y)
        weighted = losses * weight if weight is not None else losses
        loss = weighted.mean() if len(y) == n else weighted.sum() / n
        penalty = self.objective.penalty() if whole else None   # on the weights, in fp32
        if penalty is not None:
            loss = loss + penalty
        return losses, logits, loss

    def _backward(self, loss: torch.Tensor) -> bool:
        if not loss.requires_grad:
            return False
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        return True

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with self._autocast(self.eval_dtype):
            return self.forward(x).float()
