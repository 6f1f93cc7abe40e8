"""The indexed dataset every method keys on: uint8 images, integer labels, a stable per-sample id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch

from edge_sel.data.resize import CHUNK, resize_pixels, scaled_pad


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
    # The (height, width) a model is given the images at, when it is not the size they are held
    # at: a folder is held at its own size and each batch resized (None: as held).
    size: tuple[int, int] | None = None

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
        return [self.images.shape[1], *(self.size or self.images.shape[2:])]

    def pixels(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images at `positions` (all without) as a model takes them: at the run's size."""
        images = self.images if positions is None else self.images[positions]
        return images if self.size is None else resize_pixels(images, self.size)

    def at_size(self, height: int, width: int) -> "IndexedDataset":
        """The same images given to a model at height x width, the crop padding scaled with them;
        the images are resized a batch at a time, never held at that size."""
        h, w = self.images.shape[-2:]
        size = None if (height, width) == (h, w) else (height, width)
        pad = scaled_pad(int(self.augment.get("crop_pad", 0)), min(h, w), min(height, width))
        return replace(self, size=size, class_names=list(self.class_names), augment={**self.augment, "crop_pad": pad})

    def at_run_size(self) -> "IndexedDataset":
        """A copy held at the run's size (for a shift that acts on the pixels a model sees)."""
        if self.size is None:
            return self
        out = replace(self, images=self.pixels(), size=None, class_names=list(self.class_names),
                      augment=dict(self.augment))
        if hasattr(self, "clean_labels"):       # a label-noise shift's record travels with the images
            out.clean_labels = self.clean_labels
        return out

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
        if self.size is not None:
            h.update(f"resized to {self.size}".encode())
        return h.hexdigest()[:16]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] units: the normalisation a checkpoint carries."""
        if self.size is None:
            x = self.images.float().div_(255)
            mean = x.mean(dim=(0, 2, 3))
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        else:       # at the run's size, a chunk at a time (the resized set is never held whole)
            sums = torch.zeros(2, self.images.shape[1], dtype=torch.float64)
            for lo in range(0, len(self), CHUNK):
                x = self.pixels(torch.arange(lo, min(lo + CHUNK, len(self)))).double().div_(255)
                sums += torch.stack([x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))]).cpu()
            n = len(self) * self.size[0] * self.size[1]
            mean = sums[0] / n
            std = ((sums[1] - n * mean.square()) / max(n - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-3)
        return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


@dataclass
class Splits:
    train: IndexedDataset
    val: IndexedDataset
    test: IndexedDataset
    test_clean: IndexedDataset | None = None   # the test split before a --shift (forgetting)
