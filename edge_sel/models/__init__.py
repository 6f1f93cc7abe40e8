"""Models by name, with parameter counts."""

from __future__ import annotations

from torch import nn

from edge_sel.errors import InputError
from edge_sel.models.edgecnn import EdgeCNN
from edge_sel.models.resnet import ResNet18Cifar

MODELS = {
    "resnet18_cifar": ResNet18Cifar,
    "edgecnn": EdgeCNN,
}


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if name not in MODELS:
        raise InputError(f"--model: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_table(num_classes: int = 10, in_channels: int = 3) -> list[tuple[str, int]]:
    return [(name, count_parameters(cls(num_classes, in_channels))) for name, cls in MODELS.items()]
