"""Which input sizes a model runs at: a globally pooled network (every built-in one) takes any size
its strides leave a feature map for, a network that flattens a fixed-size map into its classifier
only the size it was built for. Told by forwards on the meta device (no memory, no compute), so a
size the model cannot take is refused before any image is decoded."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from edge_sel.config import MAX_IMAGE_SIZE as LARGEST, MIN_IMAGE_SIZE as SMALLEST
from edge_sel.core.meta_twin import meta_twin
from edge_sel.errors import InputError


def _output_at(model: nn.Module, channels: int, size: int, probe: list | None = None):
    twin = meta_twin(model).eval()
    hooks = []
    if probe is not None:       # the spatial size entering each global pool
        for m in twin.modules():
            if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                hooks.append(m.register_forward_pre_hook(lambda _m, args: probe.append(tuple(args[0].shape[-2:]))))
    try:
        with torch.no_grad():
            return twin(torch.zeros(2, channels, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()


def runs_at(model: nn.Module, channels: int, num_classes: int, size: int) -> bool:
    """Whether `model` gives [N, num_classes] logits for size x size inputs."""
    try:
        out = _output_at(model, channels, size)
    except Exception:
        return False
    return isinstance(out, torch.Tensor) and tuple(out.shape) == (2, num_classes)


def reduction(model: nn.Module, channels: int, size: int = 224) -> int | None:
    """How many-fold the model shrinks its input before its global pool (32 for EfficientNet-Lite),
    or None where it has no global pool to measure at."""
    seen: list = []
    try:
        _output_at(model, channels, size, seen)
    except Exception:
        return None
    return max(1, round(size / max(seen[-1]))) if seen else None


def input_sizes(model: nn.Module, card) -> dict:
    """What the card records: the size trained at, whether others run, and the smallest useful one
    (where the last feature map is one pixel)."""
    channels, height, width = card.input_shape
    other = height + 8 if height + 8 <= LARGEST else height - 8
    pooled = runs_at(model, channels, card.num_classes, other)
    out = {"trained_at": [height, width], "any_size": pooled}
    if pooled:
        fold = reduction(model, channels)
        out["smallest"] = max(SMALLEST, fold or SMALLEST)
        out["largest"] = LARGEST
    return out


def fit_to_size(model: nn.Module, card, size: int | None, where: str) -> bool:
    """A checkpoint's model made to take `size` x `size` inputs (the card's shape changed to it), or
    refused in one line when it cannot; True where the size changed."""
    channels, height, width = card.input_shape
    if size is None or (size, size) == (height, width):
        return False
    if not runs_at(model, channels, card.num_classes, size):
        raise InputError(f"--image-size {size}: the checkpoint {where} takes {width}x{height} images only (its model "
                         f"does not pool globally before its classifier); pass --image-size {height}"
                         if height == width else f"--image-size {size}: the checkpoint {where} takes {width}x{height} "
                         f"images only")
    card.training = {**(card.training or {}), "input_sizes": {**(card.training or {}).get("input_sizes", {}),
                                                               "trained_at": [height, width], "any_size": True}}
    card.input_shape = [channels, size, size]
    return True


def warn_below_use(model: nn.Module, size: int | None, label: str) -> None:
    """A warning where --image-size is below what the model can use (its last feature map under a
    pixel of the image: the rest is padding)."""
    if size is None:
        return
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    fold = reduction(model, first.in_channels if first is not None else 3)
    if fold and size < fold:
        warnings.warn(f"--image-size {size}: {label} shrinks its input {fold}-fold before pooling; below {fold} px "
                      f"its last feature map is padding, not the image")
