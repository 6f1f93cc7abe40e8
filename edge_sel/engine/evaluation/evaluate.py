"""Evaluation passes and the per-class statistics that records carry."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.data import BatchLoader, IndexedDataset
from edge_sel.device_caps import accumulator_dtype


@torch.inference_mode()
def predict_dataset(predict, ds: IndexedDataset, mean, std, batch_size: int,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Logits for every sample of `ds`, in order, without augmentation."""
    if len(ds) == 0:
        return torch.zeros(0, ds.num_classes)
    loader = BatchLoader(ds, mean, std, batch_size, augment=False, generator=torch.Generator(),
                         memory_format=memory_format)
    positions = torch.arange(len(ds))
    return torch.cat([predict(b.x) for b in loader.batches(positions)])


def validation_subset(val: IndexedDataset, n: int) -> IndexedDataset:
    """`--val-subset N`: a fixed draw of N validation samples (the same for a run and for promote's
    check of the deployed model on that run's data)."""
    if not n or n >= len(val):
        return val
    draw = torch.Generator().manual_seed(4099)
    positions = torch.randperm(len(val), generator=draw)[:n].sort().values
    return val.subset(positions.to(val.images.device))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    if len(labels) == 0:
        return None
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Right/wrong per sample (bool)."""
    return logits.argmax(1) == labels.to(logits.device)


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    labels = labels.to(logits.device)
    correct = torch.bincount(labels[logits.argmax(1) == labels], minlength=num_classes).float()
    total = torch.bincount(labels, minlength=num_classes).float()
    return [None if t == 0 else c / t for c, t in zip(correct.tolist(), total.tolist())]


class EmbarrassmentMeter:
    """Per-class embarrassment E_c = mean CE(logits / T, y) over the class's trained samples, from
    the training forward pass itself (no extra pass); confidence C_c = max(0, 1 - E_c)."""

    def __init__(self, num_classes: int, temperature: float, device):
        self.temperature = temperature
        dtype = accumulator_dtype(device)
        self.sum = torch.zeros(num_classes, dtype=dtype, device=device)
        self.count = torch.zeros(num_classes, dtype=dtype, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        ce = nn.functional.cross_entropy(logits / self.temperature, labels, reduction="none")
        self.sum.index_add_(0, labels, ce.to(self.sum.dtype))
        self.count.index_add_(0, labels, torch.ones_like(ce, dtype=self.count.dtype))

    def values(self) -> list[float | None]:
        return [None if n == 0 else s / n for s, n in zip(self.sum.tolist(), self.count.tolist())]

    @staticmethod
    def confidence(e: float | None) -> float | None:
        return None if e is None else max(0.0, 1.0 - e)


def evaluation_flops(counter: FlopCounter, n: int, batch_size: int) -> int:
    """Counted FLOPs of forward passes over `n` samples in batches of `batch_size` (the last short)."""
    full, rest = divmod(n, batch_size)
    return full * (counter.eval_batch(batch_size) if full else 0) + (counter.eval_batch(rest) if rest else 0)


@dataclass
class EvaluationSets:
    """The sets a run is judged on: validation (what keep-best and strategies decide by), test with
    its per-class split, under a shift the clean test set (what shifted training forgets), and with
    a checkpoint's source memory the guard anchors (what the whole life forgets), evaluated with
    every validation."""
    val: IndexedDataset
    test: IndexedDataset
    clean_test: IndexedDataset | None
    mean: list[float]
    std: list[float]
    batch_size: int
    memory_format: torch.memory_format
    flops: FlopCounter          # the live model's
    class_names: list[str]
    anchors: IndexedDataset | None = None      # the guard anchors evaluated (engine/levers/guard_set.py), never trained on
    source_anchor_acc: float | None = None     # the source model's accuracy on them (the reference)
    anchors_held: int = 0                      # guard anchors the checkpoint ships (`anchors` may be a draw of them)
    # The last validation's right/wrong per image (a bool tensor on the CPU; None when it did not
    # validate): what a paired test between candidates needs (engine/evaluation/keep.py).
    val_right: torch.Tensor | None = None

    def final_images(self) -> int:
        """Images the last epoch's evaluation runs over."""
        return len(self.val) + len(self.anchors or ()) + len(self.test) + len(self.clean_test or ())

    def logits(self, predict, ds: IndexedDataset) -> torch.Tensor:
        """`predict`'s logits over `ds` in this run's evaluation batches and layout."""
        return predict_dataset(predict, ds, self.mean, self.std, self.batch_size, self.memory_format)

    def _flops(self, ds: IndexedDataset) -> int:
        return evaluation_flops(self.flops, len(ds), self.batch_size)

    def accuracies(self, predict, validate: bool, test: bool) -> dict:
        """Every key is present; `evaluated` says which sets ran, so a None means "not evaluated"."""
        names = self.class_names
        out = {"val_acc": None, "test_acc": None, **{f"acc_{n}": None for n in names},
               **({"clean_test_acc": None} if self.clean_test is not None else {}),
               "evaluated": "+".join([k for k, on in (("val", validate), ("test", test)) if on]) or "none",
               "val_samples_evaluated": len(self.val) if validate else 0,
               "test_samples_evaluated": 0, "flops_eval": 0}
        self.val_right = None
        if validate:
            right = correct(self.logits(predict, self.val), self.val.labels)
            out["val_acc"] = right.float().mean().item() if len(right) else None
            self.val_right = right.cpu()
            out["flops_eval"] += self._flops(self.val)
        if self.anchors is not None:
            out.update(self.anchor_accuracy(predict) if validate else
                       {"anchor_acc": None, "anchor_forgetting": None, "anchor_samples_evaluated": 0,
                        "flops_anchor": 0})
            out["flops_eval"] += out["flops_anchor"]
        if test:
            logits = self.logits(predict, self.test)
            out["test_acc"] = accuracy(logits, self.test.labels)
            for name, acc in zip(names, per_class_accuracy(logits, self.test.labels, len(names))):
                out[f"acc_{name}"] = acc
            out["test_samples_evaluated"] = len(self.test)
            out["flops_eval"] += self._flops(self.test)
            if self.clean_test is not None:
                out["clean_test_acc"] = accuracy(self.logits(predict, self.clean_test), self.clean_test.labels)
                out["test_samples_evaluated"] += len(self.clean_test)
                out["flops_eval"] += self._flops(self.clean_test)
        return out

    def anchor_accuracy(self, predict) -> dict:
        """Accuracy on the guard anchors and how many points it lies below the source model's
        (positive: forgotten), with the pass's counted FLOPs (part of `flops_eval`)."""
        acc = accuracy(self.logits(predict, self.anchors), self.anchors.labels)
        return {"anchor_acc": acc, "anchor_forgetting": forgetting_points(self.source_anchor_acc, acc),
                "anchor_samples_evaluated": len(self.anchors), "flops_anchor": self._flops(self.anchors),
                # how many the checkpoint ships, where a pass evaluates a draw of them
                **({"anchor_samples_held": self.anchors_held} if self.anchors_held > len(self.anchors) else {})}


def forgetting_points(source_acc: float | None, acc: float | None) -> float | None:
    """Percentage points of guard-anchor accuracy below the source model's (negative: above it)."""
    if source_acc is None or acc is None:
        return None
    return round(100 * (source_acc - acc), 4)
