"""What a deployed model serves beyond a run's validation data: the conditions of its BatchNorm bank
(--bn-conditions), each with the images its statistics are estimated on and their labels. A run
fine-tuned on tonight's data alone is judged by promote on tonight's validation split; a deployed
model that keeps a low-contrast camera's statistics may score far better there than the run's model,
which would serve those images with tonight's statistics. So promote judges both models on every
condition the deployed bank holds, each as it would serve (its own bank attached, or none), and
says which conditions' statistics a swap would drop.

The images are those the deployed statistics were estimated on: the deployed model is judged where
its statistics fit best, as a device sees it on a condition it has settled into. A bank written
before labels were kept is not judged on (its conditions are named as unjudged)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_sel.core.bn_bank import BANK_FILE, condition_names


@dataclass
class Served:
    """The deployed bank's conditions, each judged: name, images, the deployed model's accuracy and
    the run's model's (None: the condition keeps no labels)."""
    conditions: list[dict]
    dropped: list[str]              # deployed conditions the run's model keeps no statistics for
    run_keeps: int                  # conditions in the run's own bank (0: none)
    flops: int
    wall_s: float

    def record(self) -> dict:
        return {"conditions": self.conditions, "dropped": self.dropped, "run_keeps": self.run_keeps,
                "flops": self.flops, "wall_s": self.wall_s}


def points_below(c: dict) -> float:
    return 100 * (c["deployed_acc"] - c["candidate_acc"])


def worst_loss(served: dict | None, limit: float | None) -> dict | None:
    """The judged condition where the run's model falls furthest below the deployed one, when that
    is more than `limit` points (0 without one); None when none does."""
    judged = [c for c in (served or {}).get("conditions", []) if c.get("candidate_acc") is not None]
    if not judged:
        return None
    worst = max(judged, key=points_below)
    return worst if points_below(worst) > (limit or 0) else None


def loses_why(worst: dict, limit: float | None) -> str:
    return (f"on the deployed model's condition {worst['name']!r} ({worst['samples']} images) the run's model "
            f"scores {100 * worst['candidate_acc']:.2f}% against its {100 * worst['deployed_acc']:.2f}%, "
            f"{points_below(worst):.2f} points below (--max-forgetting {limit or 0:g})")


def dropped_words(served: dict | None, promoted: bool) -> str:
    """What a swap drops of what the deployed model serves, said in the decision ("" when nothing)."""
    if not served or not served.get("dropped"):
        return ""
    dropped = served["dropped"]
    verb = "are" if promoted else "would be"
    what = (f"the deployed model's {len(dropped)} conditions' statistics" if served.get("run_keeps") == 0
            else f"the deployed model's statistics for {', '.join(dropped)}")
    keeps = "the run keeps none" if served.get("run_keeps") == 0 else "the run's bank does not keep them"
    return f"; {what} {verb} dropped ({keeps})"


def unjudged_words(served: dict | None) -> str:
    unjudged = [c["name"] for c in (served or {}).get("conditions", []) if c.get("candidate_acc") is None]
    return "" if not unjudged else f"; not judged on the deployed conditions {', '.join(unjudged)} (no labels kept)"


def judge_served(deployed: Path, run_dir: Path, settings: dict, batch: int) -> Served | None:
    """Both models, each with its own bank, on every condition the deployed bank holds; None when
    the deployed model keeps no bank. `settings`: the run's evaluation (precision, layout, threads)."""
    if not (Path(deployed) / BANK_FILE).is_file():
        return None
    from edge_sel.core.flops import FlopCounter
    from edge_sel.data import IndexedDataset
    from edge_sel.engine.evaluation.bn_bank import attach_saved_bank
    from edge_sel.engine.evaluation.evaluate import accuracy, evaluation_flops, predict_dataset
    from edge_sel.engine.machine.layout import FORMATS
    from edge_sel.engine.machine.precision import autocast
    from edge_sel.models import load_checkpoint
    from edge_sel.predict.conditions import feature_flops
    from edge_sel.threads import torch_threads
    started = time.perf_counter()
    memory_format = FORMATS[settings["memory_format"]]
    served = []
    for where in (deployed, run_dir):
        model, card = load_checkpoint(where)
        model = model.to(memory_format=memory_format).eval()
        served.append((model, card, attach_saved_bank(model, where, card), FlopCounter(model, list(card.input_shape))))
    (_, deployed_card, deployed_bank, _), (_, _, run_bank, _) = served
    kept = set(condition_names(run_dir) or [])
    # Each bank's conditions are described once to choose between them (as validate_deployed counts).
    flops = sum(len(c.images) for _, card, bank, _ in served if bank is not None for c in bank.conditions) \
        * feature_flops(list(deployed_card.input_shape))
    judged = []
    for condition in deployed_bank.conditions:
        row = {"name": condition.name, "samples": len(condition.images), "deployed_acc": None, "candidate_acc": None}
        if condition.labels is not None:
            n = len(condition.images)
            ds = IndexedDataset(condition.images, condition.labels, torch.arange(n), list(deployed_card.class_names),
                                name=condition.name)
            accs = []
            for model, card, bank, counter in served:
                with torch.inference_mode(), torch_threads(settings["threads"]), \
                        autocast(torch.device("cpu"), settings["eval"]):
                    logits = predict_dataset(lambda x: model(x).float(), ds, card.mean, card.std, batch, memory_format)
                flops += evaluation_flops(counter, n, batch)
                if bank is not None:        # choosing each image's condition
                    flops += bank.take_selected() * bank.choice_flops(list(card.input_shape))
                accs.append(accuracy(logits, ds.labels))
            row.update(deployed_acc=accs[0], candidate_acc=accs[1])
        judged.append(row)
    dropped = [c.name for c in deployed_bank.conditions if c.name not in kept]
    return Served(judged, dropped, len(kept), flops, time.perf_counter() - started)
