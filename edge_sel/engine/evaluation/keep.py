"""Which weights a fine-tune hands back. The trained model (the last epoch) is the prior: an earlier
candidate (the starting checkpoint, the BatchNorm-adapted model, an earlier epoch) is handed back only
where validation resolvably says the later one is worse, by a paired test on the same validation
images' right/wrong (engine/evaluation/paired.py). On 40 validation images, one image apart, nothing
is resolved and the trained model is kept, saying so. `--keep last` keeps the last epoch whatever
validation says.

With the checkpoint's source memory, `best` is guarded (`--max-forgetting P`): a candidate whose
guard-anchor accuracy is more than P points below the source model's, and below the starting
model's, is refused however much it gains on validation. A start that had already forgotten is not
made the bar (it stays a candidate), and a candidate that forgets less than the start is allowed."""

from __future__ import annotations

import torch

from edge_sel.engine.evaluation.evaluate import forgetting_points
from edge_sel.engine.evaluation.paired import LEVEL, Paired, compare

WARMUP_EPOCH = -1       # the starting checkpoint, evaluated before the first step
BN_ADAPT_EPOCH = "bn_adapt"   # the starting checkpoint after BatchNorm re-estimation, before training
LEVEL_WORDS = f"{LEVEL:g}"   # the paired test's level, as the reasons say it


class ModelChoice:
    def __init__(self, mode: str, max_forgetting: float | None = None, has_anchors: bool = False,
                 source_anchor_acc: float | None = None):
        self.mode = mode
        self.max_forgetting = max_forgetting           # None: no guard asked for
        self.has_anchors = has_anchors
        self.source_anchor_acc = source_anchor_acc     # the source model's accuracy on the guard anchors judged
        self.epoch: int | None = None          # epoch of the kept weights (-1: the starting checkpoint)
        self.val_acc: float | None = None
        self.test_acc: float | None = None
        self.clean_test_acc: float | None = None   # under a shift, when the end of the run tested the kept weights
        self.baseline_val_acc: float | None = None
        self.start_at_chance: float | None = None   # a start no epoch trained: chance, not evaluated
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
        # Every validated candidate in order: its epoch, accuracy, per-image right/wrong on the
        # validation images (a bool tensor, or None where none was given) and whether the guard allowed it.
        self.candidates: list[dict] = []
        # Candidates validation resolvably put below an earlier one, with the test's numbers.
        self.overruled: list[dict] = []
        # The choice validation alone would have made: when it differs, the guard decided.
        self.unguarded_epoch: int | str | None = None
        self.unguarded_val_acc: float | None = None

    @property
    def guard_applies(self) -> bool:
        return self.mode == "best" and self.max_forgetting is not None and self.source_anchor_acc is not None

    def consider(self, epoch: int, val_acc: float | None, test_acc: float | None, model: torch.nn.Module,
                 anchor_acc: float | None = None, right: torch.Tensor | None = None) -> None:
        """Called with the starting checkpoint's evaluation (epoch -1) and after every epoch;
        `anchor_acc`: the candidate's guard-anchor accuracy (None without source memory); `right`:
        its right/wrong on each validation image, in the order every candidate is validated."""
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
        if self.candidates and self.candidates[-1]["epoch"] == epoch:
            # The same epoch again, its test pass run at the end: a figure, not a new candidate.
            if self.epoch == epoch and test_acc is not None:
                self.test_acc = test_acc
            return
        candidate = {"epoch": epoch, "val_acc": val_acc, "allowed": True,
                     "right": None if right is None else right.detach().to("cpu", torch.bool)}
        earlier, self.candidates = self.candidates, [*self.candidates, candidate]
        if self.unguarded_epoch is None or self._beaten(candidate, earlier) is None:
            self.unguarded_epoch, self.unguarded_val_acc = epoch, val_acc
        forgot = self.forgets(epoch, anchor_acc)
        if forgot is not None:
            candidate["allowed"] = False
            self.refused.append({"epoch": epoch, "val_acc": val_acc, **forgot})
            return
        beaten = self._beaten(candidate, [c for c in earlier if c["allowed"]])
        if beaten is not None and self.epoch is not None:
            by, paired = beaten
            self.overruled.append({"epoch": epoch, "val_acc": val_acc, "by": by["epoch"], "by_val_acc": by["val_acc"],
                                   "by_only": paired.first_only, "only": paired.second_only, "p": paired.p,
                                   "images": paired.images})
            return
        # Later is the prior: training the device asked for is kept unless validation resolves it is worse.
        self.epoch, self.val_acc, self.test_acc, self.anchor_acc = epoch, val_acc, test_acc, anchor_acc
        self._keep(model.state_dict())

    @staticmethod
    def _beaten(candidate: dict, earlier: list[dict]) -> tuple[dict, Paired] | None:
        """The earlier candidate validation resolvably puts above `candidate` (the highest of them,
        the later of equals), with the test; None where none is (or nothing can be compared)."""
        found = None
        for other in earlier:
            paired = _paired(other, candidate)
            if paired is not None and paired.first_better and (found is None or other["val_acc"] >= found[0]["val_acc"]):
                found = (other, paired)
        return found

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

    def _rival(self) -> tuple[dict, Paired | None] | None:
        """The kept last epoch's closest earlier rival the guard allowed: the highest on validation
        (the later of equals) when it scored at least as high, with their paired test."""
        kept = next((c for c in reversed(self.candidates) if c["epoch"] == self.epoch), None)
        earlier = [c for c in self.candidates if c["allowed"] and c is not kept]
        if kept is None or not earlier:
            return None
        rival = max(reversed(earlier), key=lambda c: c["val_acc"])
        return (rival, _paired(rival, kept)) if rival["val_acc"] >= kept["val_acc"] else None

    def describe(self, interrupted: bool = False) -> dict:
        """What the summary and model card say about the output model, and why (`interrupted`: the
        run stopped before its last epoch, so nothing is concluded about fine-tuning)."""
        base = self.baseline_val_acc
        rule, rival = None, None
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
        elif self.last_epoch is None and self.keeps_warmup:
            which = "warmup"
            reason = "no epoch was trained; the output model is the starting checkpoint"
        elif self.epoch == self.last_epoch and (rival := self._rival()) is not None:
            which, rule = "last", "unresolved"
            other, paired = rival
            tested = ("no per-image results were kept to test the difference" if paired is None else
                      f"{paired.words()}, not below {LEVEL_WORDS}")
            reason = (f"validation could not tell the last epoch ({_pct(self.val_acc)}) from {_name(other['epoch'])} "
                      f"({_pct(other['val_acc'])}): {tested}; the output model is the trained model, the last epoch")
        elif self.epoch == self.last_epoch:
            which = "best"
            start = (f"starting checkpoint {_pct(base)}" if self.start_at_chance is None else
                     f"the starting checkpoint at chance, {_pct(self.start_at_chance)}, its classifier untrained: "
                     f"not evaluated")
            reason = f"epoch {self.epoch} had the best validation accuracy ({_pct(self.val_acc)}; {start})"
        else:
            which = "warmup" if self.keeps_warmup else "bn_adapt" if self.epoch == BN_ADAPT_EPOCH else "best"
            reason = self._overruled_reason()
        forgot = any(r["epoch"] == self.unguarded_epoch for r in self.refused)
        if rule in (None, "unresolved") and self.unguarded_epoch != self.epoch and self.guard_applies and forgot:
            rule = "forgets"        # validation alone would have kept a candidate the guard refused
            reason = self._forgets_reason()
        rule = rule or which
        helped = None if base is None or self.val_acc is None or interrupted else \
            (which != "warmup" and self.val_acc > base)
        return {"keep": self.mode, "kept": which, "kept_epoch": self.epoch, "kept_val_acc": self.val_acc,
                "kept_test_acc": self.test_acc,
                **({"kept_clean_test_acc": self.clean_test_acc} if self.clean_test_acc is not None else {}),
                "baseline_val_acc": base, "baseline_test_acc": self.baseline_test_acc,
                "fine_tuning_helped": helped, "reason": reason, "rule": rule,
                **({"paired": self._paired_numbers(rival)} if rival is not None else {}),
                **({"overruled": list(self.overruled)} if self.overruled else {}),
                "kept_anchor_acc": self.anchor_acc, "baseline_anchor_acc": self.baseline_anchor_acc,
                "guard": self._guard(), "refused": list(self.refused)}

    @staticmethod
    def _paired_numbers(rival: tuple[dict, Paired | None]) -> dict:
        other, paired = rival
        return {"against": other["epoch"], "against_val_acc": other["val_acc"],
                **({} if paired is None else {"images": paired.images, "against_only": paired.first_only,
                                              "kept_only": paired.second_only, "p": paired.p})}

    def _overruled_reason(self) -> str:
        """Why an earlier candidate is handed back: the last epoch validated resolvably below one (and
        perhaps forgot as well)."""
        last = self._last_overruled()
        kept = f"{_name(self.epoch)} (validation {_pct(self.val_acc)})"
        refused = next((r for r in self.refused if r["epoch"] == self.last_epoch), None)
        forgot = "" if refused is None else \
            f"; it also forgot ({refused['anchor_forgetting']:.2f} points below the source on the guard anchors)"
        if last is None:
            return f"the output model is {kept}" + forgot
        said = (f"the last epoch's validation accuracy ({_pct(last['val_acc'])}) is resolvably below "
                f"{_name(last['by'])}'s ({_pct(last['by_val_acc'])}): on {last['images']:,} validation images one was "
                f"right where the other was wrong on {last['by_only']} and {last['only']}, exact McNemar "
                f"p = {last['p']:.3g}{forgot}; the output model is {kept}")
        return f"fine-tuning did not help on this data: {said}" if self.keeps_warmup else said

    def _last_overruled(self) -> dict | None:
        """The test that put the last epoch below an earlier candidate: as made when it arrived, or (a
        last epoch the guard refused first) against the kept one."""
        made = next((o for o in reversed(self.overruled) if o["epoch"] == self.last_epoch), None)
        if made is not None:
            return made
        last = next((c for c in self.candidates if c["epoch"] == self.last_epoch), None)
        kept = next((c for c in reversed(self.candidates) if c["epoch"] == self.epoch), None)
        paired = None if last is None or kept is None else _paired(kept, last)
        if paired is None or not paired.first_better:
            return None
        return {"epoch": last["epoch"], "val_acc": last["val_acc"], "by": kept["epoch"], "by_val_acc": kept["val_acc"],
                "by_only": paired.first_only, "only": paired.second_only, "p": paired.p, "images": paired.images}

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
        return (f"{name} would have been kept on validation ({_pct(best['val_acc'])}) but forgot: guard-anchor "
                f"accuracy {_pct(best['anchor_acc'])}, {best['anchor_forgetting']:.2f} points below the source "
                f"model's {_pct(self.source_anchor_acc)} (--max-forgetting {self.max_forgetting:g}) and below the "
                f"starting checkpoint's {_pct(self.baseline_anchor_acc)}; the output model is {kept} (validation "
                f"{_pct(self.val_acc)}, guard anchors {_pct(self.anchor_acc)})")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("mode", "epoch", "val_acc", "test_acc", "baseline_val_acc",
                                               "baseline_test_acc", "last_epoch", "no_validation", "weights",
                                               "anchor_acc", "baseline_anchor_acc", "refused", "unguarded_epoch",
                                               "unguarded_val_acc", "candidates", "overruled", "start_at_chance")}

    def load_state_dict(self, state: dict | None) -> None:
        """A state from before the guard has none of its fields: the choice so far was the
        unguarded one. One from before the paired test has no candidates: the choice so far
        stands, and later candidates are compared with nothing before them (kept as the prior)."""
        state = dict(state or {})
        if "unguarded_epoch" not in state:
            state.update(unguarded_epoch=state.get("epoch"), unguarded_val_acc=state.get("val_acc"))
        for k, v in state.items():
            if k != "mode":
                setattr(self, k, v)


def _paired(first: dict, second: dict) -> Paired | None:
    """Two candidates' paired test on validation, or None where one has no per-image results."""
    a, b = first.get("right"), second.get("right")
    if a is None or b is None or a.shape != b.shape:
        return None
    return compare(a, b)


def _name(epoch) -> str:
    return ("the starting checkpoint" if epoch == WARMUP_EPOCH else
            "the BatchNorm-adapted model" if epoch == BN_ADAPT_EPOCH else f"epoch {epoch}")


def load_kept(model: torch.nn.Module, kept: dict) -> None:
    """The kept state into `model`: every key it holds, the rest as training left it (unmoved)."""
    unexpected = model.load_state_dict(kept, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"the kept state names tensors the model lacks: {unexpected[:3]}")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
