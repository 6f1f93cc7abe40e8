"""Models by name or factory (models.spec), with parameter counts, the model a checkpoint directory
holds, and a model's untrained twin."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from edge_sel.core.checkpoint import ModelCard, read_card, read_weights
from edge_sel.errors import InputError, required_file
from edge_sel.models.edgecnn import EdgeCNN
from edge_sel.models.groupnorm import GroupNormCNN
from edge_sel.models.mobilenet import MobileNetV2
from edge_sel.models.registry import MODELS
from edge_sel.models.resnet import ResNet18Cifar
from edge_sel.models.spec import ModelSpec, build_from_spec, check_card_spec, make_spec
from edge_sel.models.lite_residual import residuals_from_weights
from edge_sel.models.start_weights import first_mismatch

__all__ = ["MODELS", "EdgeCNN", "GroupNormCNN", "MobileNetV2", "ResNet18Cifar", "ModelSpec", "build_model",
           "card_spec", "model_for_card", "count_parameters", "model_table", "load_checkpoint", "untrained_twin"]


def build_model(spec: str | ModelSpec, num_classes: int, in_channels: int = 3,
                input_shape: list[int] | None = None) -> nn.Module:
    """The model a spec (or a registered name) describes; with `input_shape`, its output is checked
    on one meta-device batch (models.spec.check_output)."""
    spec = spec if isinstance(spec, ModelSpec) else make_spec(spec)
    shape = list(input_shape) if input_shape is not None else None
    return build_from_spec(spec, num_classes, shape or [in_channels, 32, 32], check=shape is not None)


def card_spec(card: ModelCard) -> ModelSpec:
    """The spec a card stores (older cards name a registered model by `architecture` only)."""
    try:
        return ModelSpec.from_json(card.model or card.architecture)
    except ValueError as e:
        raise InputError(f"model card: {e}") from None


def model_for_card(card: ModelCard, where="model card", check_output: bool = True) -> nn.Module:
    """An untrained model of the architecture a card describes, ready for its weights; a card that
    asks to run code the user did not choose is refused (models.spec.check_card_spec).
    `check_output=False` skips the meta-device forward, for a caller that loads weights next: the
    first meta forward of a process costs about 1.5 s (torch's meta kernels load), and every command
    that reads a checkpoint paid it."""
    spec = card_spec(card)
    check_card_spec(spec, where)
    return build_from_spec(spec, card.num_classes, list(card.input_shape), check=check_output)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_table(num_classes: int = 10, in_channels: int = 3) -> list[tuple[str, int]]:
    return [(name, count_parameters(cls(num_classes, in_channels))) for name, cls in MODELS.items()]


def load_checkpoint(directory: Path) -> tuple[nn.Module, ModelCard]:
    """The model a checkpoint's card names, with the checkpoint's weights loaded."""
    directory = Path(directory)
    card = read_card(directory)
    weights = required_file(directory, "model.safetensors", "--checkpoint")     # before building the model
    # The weights fix every tensor's shape (a strict load below), and the checkpoint's model had its
    # output checked when it was made: no meta-device forward here.
    model = model_for_card(card, directory / "model.json", check_output=False)
    state = read_weights(directory)
    residuals_from_weights(model, state)        # a lite-residual fine-tune's branches (methods/update/lite_residual.py)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{weights}: does not match architecture {card.architecture!r} "
                         f"({first_mismatch(model.state_dict(), state) or str(e).splitlines()[0]})") from None
    return model, card


def untrained_twin(model: nn.Module, seed: int) -> nn.Module:
    """A fresh initialisation of the same architecture: every module's reset_parameters() (BN
    running statistics included), drawn on the CPU under its own seed so it does not depend on
    the device or disturb the run's random streams."""
    twin = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in twin.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    device = next(model.parameters()).device
    return twin.to(device)
