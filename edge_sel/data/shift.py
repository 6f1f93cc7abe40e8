"""Shift scenarios: a device's local data as it differs from the server's, applied to any dataset's
splits after they are drawn (so a shard and its shifted copy hold the same samples).

Spec grammar (`--shift`), items joined by `;`:

    corrupt=NAME:SEVERITY     a CIFAR-10-C style corruption (edge_sel.data.corruptions) of the
                              training, validation and test images: the device's camera or light
    label-noise=RATE[:val]    each training label flipped with probability RATE (about RATE x N of
                              them), to another class chosen uniformly; with `:val` the validation
                              labels too (a device's own labels are as noisy for validation as
                              for training)
    imbalance=longtail:RATIO  training classes thinned exponentially, the last class RATIO times
                              rarer than the first (validation and test stay balanced)
    classes=A,B,...           a device that sees only these classes (by index), in every split
    frames=F[:ORDER]          a camera's stream (edge_sel.data.frames): each training scene filmed
                              as F near-duplicate frames (small motion, sensor noise), validation
                              and test one frame per scene; ORDER scene (default: scene by scene,
                              as a camera sends them), shuffled, or dedup (one frame per training
                              scene: what a perfect de-duplicator keeps)

Which samples are hit depends only on `--shift-seed` and each sample's stable index (test images,
numbered apart from training ones, draw their corruption noise from a pool of their own). The test
split before any shift is kept as `Splits.test_clean`: evaluation reports `clean_test_acc` on it,
so forgetting of the server's distribution shows next to the local accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from edge_sel.data.corruptions import CORRUPTIONS, corrupt
from edge_sel.data.frames import ORDERS, to_frames
from edge_sel.data.dataset import IndexedDataset, Splits
from edge_sel.data.draws import sample_uniform
from edge_sel.errors import InputError


@dataclass(frozen=True)
class Shift:
    corruption: tuple[str, int] | None = None
    label_noise: float = 0.0
    noisy_val: bool = False
    longtail: float | None = None
    classes: tuple[int, ...] | None = None
    frames: int = 1
    order: str = "scene"

    @property
    def active(self) -> bool:
        return bool(self.corruption or self.label_noise or self.longtail or self.classes or self.frames > 1)


def parse_shift(text: str | None) -> Shift:
    shift = Shift()
    if not text:
        return shift
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--shift: {item!r} is not KEY=VALUE (corrupt=, label-noise=, imbalance=, classes=, frames=)")
        try:
            if key == "corrupt":
                name, _, sev = value.partition(":")
                if name not in CORRUPTIONS:
                    raise InputError(f"--shift: unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
                severity = int(sev or 3)
                if not 1 <= severity <= 5:
                    raise InputError(f"--shift: corruption severity must be 1-5, got {severity}")
                shift = replace(shift, corruption=(name, severity))
            elif key == "label-noise":
                rate, _, where = value.partition(":")
                rate = float(rate)
                if not 0 <= rate < 1 or where not in ("", "val"):
                    raise InputError(f"--shift: label-noise must be RATE in [0, 1) with optional ':val', got {value!r}")
                shift = replace(shift, label_noise=rate, noisy_val=where == "val")
            elif key == "imbalance":
                kind, _, ratio = value.partition(":")
                if kind != "longtail" or float(ratio) < 1:
                    raise InputError(f"--shift: imbalance must be longtail:RATIO with RATIO >= 1, got {value!r}")
                shift = replace(shift, longtail=float(ratio))
            elif key == "classes":
                classes = tuple(sorted({int(c) for c in value.split(",")}))
                if not classes or min(classes) < 0:
                    raise InputError(f"--shift: classes must be class indices like 0,1,2, got {value!r}")
                shift = replace(shift, classes=classes)
            elif key == "frames":
                count, _, order = value.partition(":")
                order = order or "scene"
                if int(count) < 2 or order not in ORDERS:
                    raise InputError(f"--shift: frames must be F[:ORDER] with F >= 2 and ORDER one of "
                                     f"{', '.join(ORDERS)}, got {value!r}")
                shift = replace(shift, frames=int(count), order=order)
            else:
                raise InputError(f"--shift: unknown key {key!r} (corrupt=, label-noise=, imbalance=, classes=, frames=)")
        except ValueError:
            raise InputError(f"--shift: cannot read {item!r}") from None
    return shift


def _uniform(index: torch.Tensor, seed: int, salt: int) -> torch.Tensor:
    return sample_uniform(index, seed, salt)


def flip_labels(ds: IndexedDataset, rate: float, seed: int) -> IndexedDataset:
    """Each label flipped with probability `rate` (a sample is flipped when its own draw falls
    below it), to a uniformly chosen other class. Whether and where a sample's label flips depends
    on its index alone, so a shard or subset flips exactly the full set's flips of its samples; the
    count is binomial around rate x N (recorded by the caller from clean_labels)."""
    k = ds.num_classes
    labels = ds.labels.clone()
    if rate > 0 and k > 1:
        index = ds.index.cpu()
        hit = (_uniform(index, seed, 1) < rate).nonzero().squeeze(1)
        offset = 1 + (_uniform(index[hit], seed, 2) * (k - 1)).long().clamp(max=k - 2)
        hit = hit.to(labels.device)
        labels[hit] = (labels[hit] + offset.to(labels.device)) % k
    out = replace(ds, labels=labels, class_names=list(ds.class_names), augment=dict(ds.augment))
    out.clean_labels = ds.labels
    return out


def longtail_keep(ds: IndexedDataset, ratio: float, seed: int) -> torch.Tensor:
    """Positions kept when class c keeps a share ratio^(-c / (K - 1)) of its samples."""
    k = ds.num_classes
    draw = _uniform(ds.index.cpu(), seed, 3)
    share = torch.tensor([ratio ** (-c / max(1, k - 1)) for c in range(k)], dtype=torch.float64)
    keep = []
    for c in range(k):
        pos = (ds.labels.cpu() == c).nonzero().squeeze(1)
        n = max(1, math.floor(len(pos) * share[c].item())) if len(pos) else 0
        keep.append(pos[torch.argsort(draw[pos], stable=True)[:n]])
    return torch.cat(keep).sort().values


def only_classes(ds: IndexedDataset, classes: tuple[int, ...]) -> torch.Tensor:
    if max(classes) >= ds.num_classes:
        raise InputError(f"--shift: classes {list(classes)} name a class beyond the dataset's {ds.num_classes}")
    return torch.isin(ds.labels.cpu(), torch.tensor(classes)).nonzero().squeeze(1)


def corrupted(ds: IndexedDataset, name: str, severity: int, seed: int, pool: str = "train") -> IndexedDataset:
    out = replace(ds, images=corrupt(ds.images.cpu(), ds.index.cpu(), name, severity, seed, pool).to(ds.images.device),
                  class_names=list(ds.class_names), augment=dict(ds.augment))
    if hasattr(ds, "clean_labels"):
        out.clean_labels = ds.clean_labels
    return out


def apply_shift(splits: Splits, shift: Shift, seed: int = 0) -> Splits:
    if not shift.active:
        return splits
    train, val, test = splits.train, splits.val, splits.test
    if shift.classes:
        train, val, test = (d.subset(only_classes(d, shift.classes)) for d in (train, val, test))
    if shift.longtail:
        train = train.subset(longtail_keep(train, shift.longtail, seed))
    # Labels are flipped per scene before a scene becomes frames; corruption then hits every frame
    # with its own draws (the order changes nothing for data that is not a stream).
    if shift.label_noise:
        train = flip_labels(train, shift.label_noise, seed)
        if shift.noisy_val:
            val = flip_labels(val, shift.label_noise, seed)
    if shift.frames > 1 or shift.corruption:
        # A camera's condition exists at the camera's resolution: frames and corruptions act on the
        # pixels a model is given (the run's size), as when the folder was decoded at that size,
        # and the corruptions' published parameters keep their meaning relative to that image.
        train, val, test = (d.at_run_size() for d in (train, val, test))
    if shift.frames > 1:
        train = to_frames(train, shift.frames, seed, every_frame=shift.order != "dedup", order=shift.order)
        val, test = (to_frames(d, shift.frames, seed, every_frame=False, order=shift.order) for d in (val, test))
    if shift.corruption:
        name, severity = shift.corruption
        train, val = (corrupted(d, name, severity, seed) for d in (train, val))
        test = corrupted(test, name, severity, seed, pool="test")     # numbered apart from training
    if len(train) == 0:
        raise InputError("--shift: the training split is empty after the shift")
    return Splits(train=train, val=val, test=test, test_clean=splits.test)
