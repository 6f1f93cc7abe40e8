"""promote's guard: the run's guard anchors (engine/levers/anchors.py), on which a candidate may not
lose more than `--max-forgetting` points below the source model while the deployed model is within
it, and a deployed model that has drifted further is replaced by a candidate within it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_sel.engine.evaluation.evaluate import forgetting_points
from edge_sel.errors import read_json_inside


@dataclass
class Guard:
    """The anchor-set rules: accuracies on the run's guard anchors and the limit in points."""
    candidate: float | None
    deployed: float | None
    source: float | None
    limit: float | None

    def not_applied(self) -> str | None:
        if self.deployed is None:
            return "no anchor set"
        if self.source is None:
            return "the run's card states no source accuracy on the guard anchors"
        if self.candidate is None:
            return "the run's summary states no guard-anchor accuracy for its output model"
        if self.limit is None:
            return "no --max-forgetting"
        return None

    def lost(self, acc: float) -> float:
        return forgetting_points(self.source, acc)

    def forgets(self) -> bool:
        return self.not_applied() is None and self.lost(self.candidate) > self.limit and self.candidate < self.deployed

    def restores(self) -> bool:
        return self.not_applied() is None and self.lost(self.deployed) > self.limit >= self.lost(self.candidate)

    def forgets_why(self) -> str:
        return (f"guard-anchor accuracy {pct(self.candidate)} is {self.lost(self.candidate):.2f} points below the "
                f"source model's {pct(self.source)} (--max-forgetting {self.limit:g}) and below the deployed "
                f"model's {pct(self.deployed)}")

    def restores_why(self, candidate_val: float | None, deployed_val: float | None) -> str:
        return (f"the deployed model has forgotten: guard-anchor accuracy {pct(self.deployed)}, "
                f"{self.lost(self.deployed):.2f} points below the source model's {pct(self.source)} "
                f"(--max-forgetting {self.limit:g}); the run's model is within it ({pct(self.candidate)}), "
                f"so it replaces the drifted one (validation {pct(candidate_val)}, deployed {pct(deployed_val)})")


def source_anchor_acc(run_dir: Path) -> float | None:
    """The source model's guard-anchor accuracy, as the run's card carries it from pretrain; None
    without a card or without the figure, an InputError for a card that is not JSON (nested too
    deeply included) or that is a link."""
    card = read_json_inside(run_dir, "model.json", "RUN")
    if not isinstance(card, dict):
        return None
    memory = card.get("source_memory")
    anchors = memory.get("anchors") if isinstance(memory, dict) else None
    acc = anchors.get("guard_acc") if isinstance(anchors, dict) else None
    return acc if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
