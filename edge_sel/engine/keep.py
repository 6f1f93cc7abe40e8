"""Which weights a fine-tune hands back: the best by local validation accuracy among the starting
checkpoint and every epoch (`best`), or the last epoch (`last`). A device left alone on data nobody
checked must never end up with a worse model than it started with."""

from __future__ import annotations

import torch

WARMUP_EPOCH = -1       # the starting checkpoint, evaluated before the first step
BN_ADAPT_EPOCH = "bn_adapt"   # the starting checkpoint after BatchNorm re-estimation, before training


class ModelChoice:
    def __init__(self, mode: str):
        self.mode = mode
        self.epoch: int | None = None          # epoch of the kept weights (-1: the starting checkpoint)
        self.val_acc: float | None = None
        self.test_acc: float | None = None
        self.baseline_val_acc: float | None = None
        self.baseline_test_acc: float | None = None
        self.last_epoch: int | None = None
        self.no_validation = False             # nothing to choose by: the last weights are kept
        self.weights: dict | None = None       # CPU copy of the kept state (mode best, when not the last)

    def consider(self, epoch: int, val_acc: float | None, test_acc: float | None, model: torch.nn.Module) -> None:
        """Called with the starting checkpoint's evaluation (epoch -1) and after every epoch."""
        if epoch == WARMUP_EPOCH:
            self.baseline_val_acc, self.baseline_test_acc = val_acc, test_acc
        elif epoch != BN_ADAPT_EPOCH:
            self.last_epoch = epoch
        if self.mode == "last" or val_acc is None:
            self.no_validation = self.no_validation or (self.mode == "best" and val_acc is None)
            self.epoch, self.val_acc, self.test_acc, self.weights = epoch, val_acc, test_acc, None
            return
        # Strictly better only: a tie keeps the earlier weights (training that does not improve
        # validation accuracy is not worth deploying).
        if self.val_acc is None or self.epoch is None or val_acc > self.val_acc:
            self.epoch, self.val_acc, self.test_acc = epoch, val_acc, test_acc
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    @property
    def keeps_warmup(self) -> bool:
        return self.epoch == WARMUP_EPOCH

    def weights_to_load(self) -> dict | None:
        """The kept state when it differs from the model's current (last) weights, else None."""
        if self.mode == "last" or self.no_validation or self.epoch == self.last_epoch:
            return None
        return self.weights

    def describe(self, interrupted: bool = False) -> dict:
        """What the summary and model card say about the output model, and why (`interrupted`: the
        run stopped before its last epoch, so nothing is concluded about fine-tuning)."""
        base = self.baseline_val_acc
        if interrupted:
            which = "last" if self.mode == "last" or self.no_validation else \
                "warmup" if self.keeps_warmup else "bn_adapt" if self.epoch == BN_ADAPT_EPOCH else "best"
            reason = "the run was interrupted before its last epoch; resume it to finish"
        elif self.mode == "last" or self.no_validation:
            which = "last"
            reason = ("--keep last: the last epoch's weights" if self.mode == "last" else
                      "no validation samples to choose by: the last epoch's weights")
        elif self.keeps_warmup:
            which = "warmup"
            reason = ("fine-tuning did not help on this data: no epoch beat the starting checkpoint's "
                      f"validation accuracy ({_pct(base)}); the output model is the starting checkpoint"
                      if self.last_epoch is not None else
                      "no epoch was trained; the output model is the starting checkpoint")
        elif self.epoch == BN_ADAPT_EPOCH:
            which = "bn_adapt"
            reason = (f"BatchNorm re-estimation alone had the best validation accuracy ({_pct(self.val_acc)}; "
                      f"starting checkpoint {_pct(base)}): no training epoch beat it, so the output model is the "
                      "starting checkpoint with re-estimated BatchNorm statistics")
        else:
            which = "best"
            reason = (f"epoch {self.epoch} had the best validation accuracy ({_pct(self.val_acc)}; "
                      f"starting checkpoint {_pct(base)})")
        helped = None if base is None or self.val_acc is None or interrupted else \
            (which != "warmup" and self.val_acc > base)
        return {"keep": self.mode, "kept": which, "kept_epoch": self.epoch, "kept_val_acc": self.val_acc,
                "kept_test_acc": self.test_acc, "baseline_val_acc": base, "baseline_test_acc": self.baseline_test_acc,
                "fine_tuning_helped": helped, "reason": reason}

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("mode", "epoch", "val_acc", "test_acc", "baseline_val_acc",
                                               "baseline_test_acc", "last_epoch", "no_validation", "weights")}

    def load_state_dict(self, state: dict | None) -> None:
        for k, v in (state or {}).items():
            if k != "mode":
                setattr(self, k, v)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
