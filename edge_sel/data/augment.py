"""Batched augmentation as tensor ops on the batch's device: random crop with padding, flips."""

from __future__ import annotations

import torch

from edge_sel.data.draws import sample_uniform


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by `pad` (reflect) and cut a random H x W window per image, in one gather."""
    if pad <= 0:
        return x
    offsets = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), generator=generator, device=generator.device)
    return crop_at(x, pad, offsets)


def crop_at(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Pad by `pad` and cut the H x W window at (offsets[0, i], offsets[1, i]) of image i."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect" if min(h, w) > pad else "constant")
    offsets = offsets.to(x.device)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment_batch(x: torch.Tensor, spec: dict, generator: torch.Generator) -> torch.Tensor:
    x = random_crop(x, int(spec.get("crop_pad", 0)), generator)
    if spec.get("flip", False):
        x = random_flip(x, generator)
    return x


def augment_by_sample(x: torch.Tensor, spec: dict, index: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Crop and flip drawn per sample from (seed, epoch, the sample's id): a sample gets the same
    augmentation in an epoch whichever batch, rank or method trains it, and a gate's own random
    draws never shift anyone's augmentation."""
    pad = int(spec.get("crop_pad", 0))
    if pad > 0:
        u = torch.stack([sample_uniform(index, seed, 1000 + 3 * epoch + k) for k in (0, 1)])
        x = crop_at(x, pad, (u * (2 * pad + 1)).long().clamp(max=2 * pad))
    if spec.get("flip", False):
        flip = (sample_uniform(index, seed, 1000 + 3 * epoch + 2) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> float in normalised units; mean and std are per channel in [0, 1] units."""
    return (x_uint8.to(dtype) / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
