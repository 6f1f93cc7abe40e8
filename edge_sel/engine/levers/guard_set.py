"""The guard anchors a run evaluates with every validation: a fixed, class-balanced draw of the
checkpoint's guard anchors, sized with the validation (engine/loop/val_size.py) and never below the
floor its --max-forgetting needs, and the source model's accuracy on that same draw (the bar
forgetting is measured from). Evaluating all 500 anchors of a ten-class checkpoint at every
validation was a third of a 1,000-image Lite0 run's joules.

The source's accuracy on the draw comes from the per-anchor right/wrong pretrain writes into the
card (`anchors.guard_right`), or, for a card from before it, from one pass of the source weights
over the draw at the start (counted with the start's evaluation); a run that evaluates no start
evaluates all anchors, as before, against the card's figure."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edge_sel.core.evidence import unpacked
from edge_sel.data.dataset import IndexedDataset

# The guard refuses a candidate whose accuracy on n anchors lies more than P points below the
# source's. A candidate that forgot nothing still flips some anchors each way: with a share d of
# them flipped, its measured loss is a paired difference with a standard deviation of about
# 100 * sqrt(d / n) points. For such a candidate to cross P by chance at most 5% of the time
# (one-sided, z = 1.645): 1.645 * 100 * sqrt(d / n) <= P, so n >= d * (164.5 / P)^2. With d = 0.1
# (Lite0 at 96 px, 2 epochs of 1,000 CIFAR-10 images at lr 0.01: 5-9% of 500 guard anchors flipped
# against the source) and the default P = 3: n >= 0.1 * 3,007 = 301; P = 5: 109; P = 1: 2,706 (all
# a checkpoint ships).
FLIP_SHARE = 0.1
Z_ONE_SIDED = 1.645
DRAW_SEED = 7207        # fixed: promote draws the same anchors from the run's count alone


def guard_floor(max_forgetting: float | None, held: int) -> int:
    """The fewest guard anchors a pass may evaluate so that --max-forgetting P is resolved (all of
    them for P = 0 or no limit: nothing smaller can tell)."""
    if not max_forgetting:
        return held
    return min(held, math.ceil(FLIP_SHARE * (Z_ONE_SIDED * 100 / max_forgetting) ** 2))


def draw_guard(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of `n` anchors, class-balanced (classes take turns in a seeded order), sorted."""
    labels = labels.cpu()
    if n >= len(labels):
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DRAW_SEED))
    rank = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        mine = order[labels[order] == c]
        rank[mine] = torch.arange(len(mine))
    turns = rank * (int(labels.max()) + 1) + labels
    return torch.argsort(turns, stable=True)[:n].sort().values


def guard_subset(guard: IndexedDataset, n: int) -> IndexedDataset:
    """The anchors a run (and promote's check of it) evaluates: `n` of them, or all for 0."""
    if not n or n >= len(guard):
        return guard
    return guard.subset(draw_guard(guard.labels, n).to(guard.labels.device))


def unpack_right(text, n: int, acc: float | None) -> torch.Tensor | None:
    """The card's per-anchor right/wrong, or None where it is missing or disagrees with the card's
    own accuracy (then it is not trusted to stand for the source)."""
    if not isinstance(text, str) or len(text) != 2 * math.ceil(n / 8) or acc is None:
        return None
    try:
        right = unpacked(text, n)
    except ValueError:
        return None
    return right if abs(right.float().mean().item() - acc) < 1e-6 else None


@dataclass
class GuardSet:
    anchors: IndexedDataset          # what each validation evaluates
    held: int                        # guard anchors the checkpoint ships
    source_acc: float | None         # the source model's accuracy on `anchors` (None: measured at the start, or unknown)
    source_from: str                 # where that figure comes from

    @property
    def measured_at_start(self) -> bool:
        return self.source_from == MEASURED

    def describe(self) -> dict:
        return {"evaluated": len(self.anchors), "held": self.held, "source_acc": self.source_acc,
                "source_from": self.source_from}


CARD, CARD_PER_ANCHOR, MEASURED = "the card", "the card's per-anchor results", "measured at the start"


def guard_set(memory, n: int, start_evaluated: bool) -> GuardSet:
    """`n` of the memory's guard anchors (0: all) and the source's accuracy on them."""
    guard, info = memory.guard, memory.info.get("anchors") or {}
    held, card_acc = len(guard), memory.source_guard_acc
    if not n or n >= held:
        return GuardSet(guard, held, card_acc, CARD)
    right = unpack_right(info.get("guard_right"), held, card_acc)
    positions = draw_guard(guard.labels, n)
    if right is not None:
        return GuardSet(guard_subset(guard, n), held, right[positions].float().mean().item(), CARD_PER_ANCHOR)
    if card_acc is not None and not start_evaluated:
        return GuardSet(guard, held, card_acc, CARD)      # no start to measure the source beside: all of them
    return GuardSet(guard_subset(guard, n), held, None, MEASURED if card_acc is not None else "not stated")


def run_guard_set(memory, cfg, phase: str) -> GuardSet | None:
    """A run's guard set (None without source memory); --guard-subset becomes 0 where the draw is
    all of them: what ran, for a resume and promote."""
    if memory is None:
        return None
    guard = guard_set(memory, cfg.guard_subset, phase == "finetune" and cfg.evaluate_start)
    if len(guard.anchors) >= guard.held:
        cfg.guard_subset = 0
    return guard


def evaluated_guard(guard: GuardSet | None, device) -> tuple:
    """The anchors, the source's accuracy on them and the count held, as the evaluation takes them."""
    return (None, None, 0) if guard is None else (guard.anchors.to(device), guard.source_acc, guard.held)
