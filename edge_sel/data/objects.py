"""Data handed over as Python objects (the Python API): image and label tensors, or any torch
Dataset of (image, label) pairs, turned into the uint8 IndexedDataset every other source gives."""

from __future__ import annotations

import torch

from edge_sel.data.dataset import IndexedDataset
from edge_sel.errors import InputError


def _images_uint8(images: torch.Tensor, label: str) -> torch.Tensor:
    """uint8 pixels as they are; floating point images are read as [0, 1] and quantised (the form
    every dataset is kept in, so augmentation and normalisation treat them alike)."""
    if images.dim() == 3:                     # N x H x W: one channel
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise InputError(f"{label}: images must be N x C x H x W (or N x H x W), got shape {list(images.shape)}")
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise InputError(f"{label}: images must be uint8 or floating point in [0, 1], got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise InputError(f"{label}: floating point images must lie in [0, 1] (found {lo:.3g} to {hi:.3g}); "
                         f"pass uint8 pixels or divide by 255")
    return (images * 255).round().to(torch.uint8).contiguous()


def from_tensors(images, labels, class_names: list[str] | None = None, name: str = "tensors",
                 label: str = "data") -> IndexedDataset:
    images = _images_uint8(torch.as_tensor(images).detach().cpu(), label)
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise InputError(f"{label}: labels must be one integer per image ({images.shape[0]} images, "
                         f"labels of shape {list(labels.shape)} and type {labels.dtype})")
    labels = labels.long()
    if len(labels) == 0 or int(labels.min()) < 0:
        raise InputError(f"{label}: labels must be class numbers 0..K-1")
    count = int(labels.max()) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(count)]
    if len(names) < count:
        raise InputError(f"{label}: {len(names)} class names for labels up to {count - 1}")
    return IndexedDataset(images, labels, torch.arange(len(labels)), names, name)


def from_dataset(dataset, class_names: list[str] | None = None, label: str = "data") -> IndexedDataset:
    """Every (image, label) item of a map-style torch Dataset, read once."""
    try:
        items = [dataset[i] for i in range(len(dataset))]
    except Exception as e:
        raise InputError(f"{label}: cannot read the dataset's items ({e.__class__.__name__}: {e})") from None
    if not items:
        raise InputError(f"{label}: the dataset is empty")
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items])
    names = class_names if class_names is not None else getattr(dataset, "classes", None)
    return from_tensors(images, labels, names, type(dataset).__name__, label)


def as_indexed(data, class_names: list[str] | None = None, label: str = "data") -> IndexedDataset:
    """A tensors pair (images, labels), a torch TensorDataset or any map-style Dataset."""
    if isinstance(data, IndexedDataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return from_tensors(data[0], data[1], class_names, label=label)
    tensors = getattr(data, "tensors", None)           # torch.utils.data.TensorDataset
    if isinstance(tensors, tuple) and len(tensors) == 2:
        return from_tensors(tensors[0], tensors[1], class_names, label=label)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return from_dataset(data, class_names, label)
    raise InputError(f"{label}: expected a dataset name, (images, labels) tensors or a torch Dataset, "
                     f"got {type(data).__name__}")
