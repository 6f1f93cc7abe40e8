"""Evaluation passes and the per-class statistics that records carry."""

from __future__ import annotations

import torch
from torch import nn

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


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    if len(labels) == 0:
        return None
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


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
