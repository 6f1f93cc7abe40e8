"""A camera's stream of test images: segments of frames in one condition each (conditions alternate,
for example clean, noise, clean, fog), and within a segment classes that come in runs (a camera
looks at one thing for a while). Built from a labelled split so every frame's class and condition
are known; the same seed gives the same stream."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge_sel.data.corruptions import corrupt
from edge_sel.data.dataset import IndexedDataset


@dataclass
class CameraStream:
    images: torch.Tensor        # uint8 N x C x H x W in arrival order
    labels: torch.Tensor        # N
    conditions: list[str]       # N: "clean" or a corruption spec NAME:SEV


def apply_condition(ds: IndexedDataset, rows: torch.Tensor, condition: str, seed: int) -> torch.Tensor:
    images = ds.pixels(rows).cpu()
    if condition == "clean":
        return images
    name, _, severity = condition.partition(":")
    return corrupt(images, ds.index[rows].cpu(), name, int(severity or 3), seed, pool="test")


def class_runs(labels: torch.Tensor, rows: torch.Tensor, run: int, g: torch.Generator) -> torch.Tensor:
    """`rows` reordered so classes come in runs of `run` frames (a random class each run)."""
    by_class = {int(c): rows[labels[rows] == c][torch.randperm(int((labels[rows] == c).sum()), generator=g)].tolist()
                for c in torch.unique(labels[rows])}
    out = []
    while any(by_class.values()):
        left = [c for c, v in by_class.items() if v]
        c = left[int(torch.randint(len(left), (1,), generator=g))]
        out.extend(by_class[c][:run])
        by_class[c] = by_class[c][run:]
    return torch.tensor(out, dtype=torch.long)


def camera_stream(ds: IndexedDataset, conditions: list[str], segment: int, run: int, seed: int,
                  corruption_seed: int = 0) -> CameraStream:
    """Segments of `segment` frames cycling through `conditions`, each frame a different image of
    `ds` (as many segments as the images allow), classes in runs of `run` within a segment."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=g)
    images, labels, names = [], [], []
    labels_all = ds.labels.cpu()
    for s in range(len(ds) // segment):
        rows = class_runs(labels_all, order[s * segment:(s + 1) * segment], run, g)
        condition = conditions[s % len(conditions)]
        images.append(apply_condition(ds, rows, condition, corruption_seed))
        labels.append(labels_all[rows])
        names.extend([condition] * len(rows))
    return CameraStream(torch.cat(images), torch.cat(labels), names)
