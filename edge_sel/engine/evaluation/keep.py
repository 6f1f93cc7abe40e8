"""Which weights a fine-tune hands back: the best by local validation accuracy among the starting
checkpoint and every epoch (`best`), or the last epoch (`last`). A device left alone on data nobody
checked must never end up with a worse model than it started with.

With the checkpoint's source memory, `best` is guarded (`--max-forgetting P`): a candidate whose
guard-anchor accuracy is more than P points below the source model's, and below the starting
model's, is refused however much it gains on validation. A start that had already forgotten is not
made the bar (it stays a candidate), and a candidate that forgets less than the start is allowed."""

from __future__ import annotations

import torch

from edge_sel.engine.evaluation.evaluate import forgetting_points

WARMUP_EPOCH = -1       # the starting checkpoint, evaluated before the first step
BN_ADAPT_EPOCH = "bn_adapt"   # the starting checkpoint after BatchNorm re-estimation, before training


class ModelChoice:
    def __init__(self, mode: str, max_forgetting: float | None = None, has_anchors: bool = False,
                 source_anchor_acc: float | None = None):
        self.mode = mode
        self.max_forgetting = max_forgetting           # None: no guard asked for
        self.has_anchors = has_anchors
        self.source_anchor_acc = source_anchor_acc     # the source model's guard-anchor accuracy
        self.epoch: int | None = None          # epoch of the kept weights (-1: the starting checkpoint)
        self.val_acc: float | None = None
        self.test_acc: float | None = None
        self.clean_test_acc: float | None = None   # under a shift, when the end of the run tested the kept weights
        self.baseline_val_acc: float | None = None
        self.baseline_test_acc: float | None = None
        self.last_epoch: int | None = None
        self.no_validation = False             # nothing to choose by: the last weights are kept
        self.weights: dict | None = None       # CPU copy of the kept state (mode best, when not the last)
        # The state keys training can move (a fixed set's parameters and the buffers), set by the
        # trainer once what trains is fixed; None: every key. Only these are copied.
        self.keys: set[str] | None = None
        self.anchor_acc: float | None = None            # the kept weights' guard-anchor accuracy
        self.baseline_anchor_acc: float | None = None
        self.refused: list[dict] = []                   # candidates the guard refused, in order
        # The choice validation alone would have made: when it differs, the guard decided.
        self.unguarded_epoch: int | str | None = None
        self.unguarded_val_acc: float | None = None

    @property
    def guard_applies(self) -> bool:
        return self.mode == "best" and self.max_forgetting is not None and self.source_anchor_acc is not None

    def consider(self, epoch: int, val_acc: float | None, test_acc: float | None, model: torch.nn.Module,
                 anchor_acc: float | None = None) -> None:
        """Called with the starting checkpoint's evaluation (epoch -1) and after every epoch;
        `anchor_acc`: the candidate's guard-anchor accuracy (None without source memory)."""
        if epoch == WARMUP_EPOCH:
            self.baseline_val_acc, self.baseline_test_acc = val_acc, test_acc
            self.baseline_anchor_acc = anchor_acc
        elif epoch != BN_ADAPT_EPOCH:
            self.last_epoch = epoch
        if self.mode == "last" or val_acc is None:
            self.no_validation = self.no_validation or (self.mode == "best" and val_acc is None)
            self.epoch, self.val_acc, self.test_acc, self.weights = epoch, val_acc, test_acc, None
            self.anchor_acc = anchor_acc
            return
        # Strictly better only: a tie keeps the earlier weights (training that does not improve
        # validation accuracy is not worth deploying).
        if self.unguarded_epoch is None or val_acc > self.unguarded_val_acc:
            self.unguarded_epoch, self.unguarded_val_acc = epoch, val_acc
        forgot = self.forgets(epoch, anchor_acc)
        if forgot is not None:
            self.refused.append({"epoch": epoch, "val_acc": val_acc, **forgot})
            return
        if self.val_acc is None or self.epoch is None or val_acc > self.val_acc:
            self.epoch, self.val_acc, self.test_acc, self.anchor_acc = epoch, val_acc, test_acc, anchor_acc
            self._keep(model.state_dict())

    def _keep(self, state: dict) -> None:
        """A copy of what can move in `state`, written over the copy kept before where it has the same
        tensors: a run's memory count holds one copy (engine/loop/counted_step.py), never two."""
        wanted = [k for k in state if self.keys is None or k in self.keys]
        kept = self.weights
        if kept is not None and list(kept) == wanted and all(
                kept[k].shape == state[k].shape and kept[k].dtype == state[k].dtype for k in wanted):
            with torch.no_grad():
                for k in wanted:
                    kept[k].copy_(state[k])
            return
        self.weights = None
        self.weights = {k: state[k].detach().cpu().clone() for k in wanted}

    def forgets(self, epoch, anchor_acc: float | None) -> dict | None:
        """The guard's numbers when it refuses this candidate, else None. The starting checkpoint is
        never refused: it is what the device has."""
        if epoch == WARMUP_EPOCH or not self.guard_applies or anchor_acc is None:
            return None
        points = forgetting_points(self.source_anchor_acc, anchor_acc)
        start = self.baseline_anchor_acc
        if points > self.max_forgetting and (start is None or anchor_acc < start):
            return {"anchor_acc": anchor_acc, "anchor_forgetting": points}
        return None

    @property
    def keeps_warmup(self) -> bool:
        return self.epoch == WARMUP_EPOCH

    def weights_to_load(self) -> dict | None:
        """The kept state when it differs from the model's current (last) weights, else None: the
        tensors training could move (load it with load_kept)."""
        if self.mode == "last" or self.no_validation or self.epoch == self.last_epoch:
            return None
        return self.weights

    def describe(self, interrupted: bool = False) -> dict:
        """What the summary and model card say about the output model, and why (`interrupted`: the
        run stopped before its last epoch, so nothing is concluded about fine-tuning)."""
        base = self.baseline_val_acc
        rule = None
        if interrupted:
            which = "last" if self.mode == "last" or self.no_validation else \
                "warmup" if self.keeps_warmup else "bn_adapt" if self.epoch == BN_ADAPT_EPOCH else "best"
            reason = "the run was interrupted before its last epoch; resume it to finish"
            rule = "interrupted"
        elif self.mode == "last" or self.no_validation:
            which = "last"
            reason = ("--keep last: the last epoch's weights" if self.mode == "last" else
                      "no validation samples to choose by: the last epoch's weights")
            rule = "last" if self.mode == "last" else "no_validation"
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
        rule = rule or which
        if rule == which and self.unguarded_epoch != self.epoch and self.guard_applies:
            rule = "forgets"        # validation alone would have kept a candidate the guard refused
            reason = self._forgets_reason()
        helped = None if base is None or self.val_acc is None or interrupted else \
            (which != "warmup" and self.val_acc > base)
        return {"keep": self.mode, "kept": which, "kept_epoch": self.epoch, "kept_val_acc": self.val_acc,
                "kept_test_acc": self.test_acc,
                **({"kept_clean_test_acc": self.clean_test_acc} if self.clean_test_acc is not None else {}),
                "baseline_val_acc": base, "baseline_test_acc": self.baseline_test_acc,
                "fine_tuning_helped": helped, "reason": reason, "rule": rule,
                "kept_anchor_acc": self.anchor_acc, "baseline_anchor_acc": self.baseline_anchor_acc,
                "guard": self._guard(), "refused": list(self.refused)}

    def _guard(self) -> dict | str:
        """What the guard was, or why it did not apply."""
        if not self.has_anchors:
            return "no anchor set"
        if self.source_anchor_acc is None:
            return "not applied: the checkpoint's card states no source accuracy on the guard anchors"
        if self.max_forgetting is None:
            return "not applied: no --max-forgetting"
        if self.mode == "last":
            return "not applied: --keep last keeps the last epoch whatever it forgot (promote still applies it)"
        return {"max_forgetting": self.max_forgetting, "source_anchor_acc": self.source_anchor_acc,
                "baseline_anchor_acc": self.baseline_anchor_acc,
                "baseline_forgetting": forgetting_points(self.source_anchor_acc, self.baseline_anchor_acc),
                "kept_anchor_acc": self.anchor_acc,
                "kept_forgetting": forgetting_points(self.source_anchor_acc, self.anchor_acc)}

    def _forgets_reason(self) -> str:
        best = next(r for r in self.refused if r["epoch"] == self.unguarded_epoch)
        name = "the BatchNorm-adapted model" if best["epoch"] == BN_ADAPT_EPOCH else f"epoch {best['epoch']}"
        kept = ("the starting checkpoint" if self.keeps_warmup else
                "the starting checkpoint with re-estimated BatchNorm statistics" if self.epoch == BN_ADAPT_EPOCH
                else f"epoch {self.epoch}")
        return (f"{name} had the best validation accuracy ({_pct(best['val_acc'])}) but forgot: guard-anchor "
                f"accuracy {_pct(best['anchor_acc'])}, {best['anchor_forgetting']:.2f} points below the source "
                f"model's {_pct(self.source_anchor_acc)} (--max-forgetting {self.max_forgetting:g}) and below the "
                f"starting checkpoint's {_pct(self.baseline_anchor_acc)}; the output model is {kept} (validation "
                f"{_pct(self.val_acc)}, guard anchors {_pct(self.anchor_acc)})")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("mode", "epoch", "val_acc", "test_acc", "baseline_val_acc",
                                               "baseline_test_acc", "last_epoch", "no_validation", "weights",
                                               "anchor_acc", "baseline_anchor_acc", "refused", "unguarded_epoch",
                                               "unguarded_val_acc")}

    def load_state_dict(self, state: dict | None) -> None:
        """A state from before the guard has none of its fields: the choice so far was the
        unguarded one."""
        state = dict(state or {})
        if "unguarded_epoch" not in state:
            state.update(unguarded_epoch=state.get("epoch"), unguarded_val_acc=state.get("val_acc"))
        for k, v in state.items():
            if k != "mode":
                setattr(self, k, v)


def load_kept(model: torch.nn.Module, kept: dict) -> None:
    """The kept state into `model`: every key it holds, the rest as training left it (unmoved)."""
    unexpected = model.load_state_dict(kept, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"the kept state names tensors the model lacks: {unexpected[:3]}")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
