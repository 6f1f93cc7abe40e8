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
    """Pad by `pad` and cut the H x W window at (offsets[0, i], offsets[1, i]) of image i. A reflected
    pad is read in place, never made: the padded copy was the loader's largest buffer (Lite0's batch
    at 96 px: 5.3 MiB beside the batch and the crop, uncounted under a memory budget)."""
    b, c, h, w = x.shape
    offsets = offsets.to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device) - pad
    cols = offsets[1, :, None] + torch.arange(w, device=x.device) - pad
    if min(h, w) > pad:         # reflect: -1 reads 1, h reads h - 2 (the edge is not repeated)
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        source = x
    else:
        source = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="constant")
        rows, cols = rows + pad, cols + pad
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return source[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def _reflect(i: torch.Tensor, side: int) -> torch.Tensor:
    return torch.where(i < 0, -i, torch.where(i > side - 1, 2 * (side - 1) - i, i))


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return flip_rows(x.clone(), _flip_draw(x, generator))


def _flip_draw(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5


def flip_rows(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Images where `flip` is set mirrored left to right, in place in `x`: a copy of the flipped rows
    only, not two of the batch."""
    x[flip] = x[flip].flip(3)
    return x


def augment_batch(x: torch.Tensor, spec: dict, generator: torch.Generator) -> torch.Tensor:
    """A new batch: `x` itself is left as it is."""
    cropped = random_crop(x, int(spec.get("crop_pad", 0)), generator)
    if spec.get("flip", False):
        cropped = flip_rows(cropped if cropped is not x else x.clone(), _flip_draw(x, generator))
    return cropped


def augment_by_sample(x: torch.Tensor, spec: dict, index: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Crop and flip drawn per sample from (seed, epoch, the sample's id): a sample gets the same
    augmentation in an epoch whichever batch, rank or method trains it, and a gate's own random
    draws never shift anyone's augmentation. A new batch: `x` itself is left as it is."""
    pad = int(spec.get("crop_pad", 0))
    out = x
    if pad > 0:
        u = torch.stack([sample_uniform(index, seed, 1000 + 3 * epoch + k) for k in (0, 1)])
        out = crop_at(x, pad, (u * (2 * pad + 1)).long().clamp(max=2 * pad))
    if spec.get("flip", False):
        out = flip_rows(out if out is not x else x.clone(),
                        (sample_uniform(index, seed, 1000 + 3 * epoch + 2) < 0.5).to(x.device))
    return out


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> float in normalised units; mean and std are per channel in [0, 1] units. One float
    copy, worked in place (the same operations in the same order: the same bits)."""
    x = x_uint8.to(dtype, copy=True)
    return x.div_(255).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
