"""The indexed dataset every method keys on: uint8 images, integer labels, a stable per-sample id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch


@dataclass
class IndexedDataset:
    images: torch.Tensor          # uint8, N x C x H x W
    labels: torch.Tensor          # int64, N
    index: torch.Tensor           # int64, N: stable id of each sample within its source
    class_names: list[str]
    name: str = "dataset"
    # Augmentation that makes sense for this data (digits must not be mirrored).
    augment: dict = field(default_factory=lambda: {"crop_pad": 0, "flip": False})
    # A camera's stream (edge_sel.data.frames): frames per scene (scene = index // frames) and the
    # order a device sees them in.
    frames: int = 1
    stream_order: str = "shuffled"

    def __post_init__(self):
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 N x C x H x W tensor")
        if self.labels.shape != (n,) or self.index.shape != (n,):
            raise ValueError("labels and index must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> list[int]:
        return list(self.images.shape[1:])

    def subset(self, positions: torch.Tensor, name: str | None = None) -> "IndexedDataset":
        positions = torch.as_tensor(positions, dtype=torch.long)
        return replace(self, images=self.images[positions], labels=self.labels[positions],
                       index=self.index[positions], class_names=list(self.class_names), name=name or self.name,
                       augment=dict(self.augment))

    def to(self, device) -> "IndexedDataset":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device),
                       index=self.index.to(device), class_names=list(self.class_names), augment=dict(self.augment))

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()

    def fingerprint(self) -> str:
        """A short content hash: images, labels and ids, so a checkpoint can say what it saw."""
        h = hashlib.sha256()
        h.update(self.images.cpu().contiguous().numpy().tobytes())
        h.update(self.labels.cpu().numpy().tobytes())
        h.update(self.index.cpu().numpy().tobytes())
        h.update("\n".join(self.class_names).encode())
        return h.hexdigest()[:16]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] units: the normalisation a checkpoint carries."""
        x = self.images.float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


@dataclass
class Splits:
    train: IndexedDataset
    val: IndexedDataset
    test: IndexedDataset
    test_clean: IndexedDataset | None = None   # the test split before a --shift (forgetting)
