"""Images resized to a run's size as a batch needs them: a folder is decoded once at its own size,
and what a model sees at another size is computed from the selected images only."""

from __future__ import annotations

import torch

CHUNK = 256     # images resized at a time when a whole set is (its float copy stays small)


def resize_pixels(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 N x C x H x W -> uint8 N x C x size[0] x size[1], bilinear with antialiasing (PIL's
    BILINEAR, which `edge-sel predict --resize` applies to a file, to within uint8 rounding),
    rounded to uint8 so that every consumer sees the pixels a camera at that size would deliver.
    Images already at `size` are returned as they are: no resize op at all."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((*images.shape[:2], *size), dtype=torch.uint8, device=images.device)
    for lo in range(0, len(images), CHUNK):
        x = torch.nn.functional.interpolate(images[lo: lo + CHUNK].float(), size=tuple(size), mode="bilinear",
                                            align_corners=False, antialias=True)
        out[lo: lo + CHUNK] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def scaled_pad(pad: int, source_side: int, side: int) -> int:
    """A random-crop padding defined at `source_side` pixels, at `side` pixels: the same share of
    the image (CIFAR's 4 px at 32 px is 16 px at 128 px)."""
    return int(round(pad * side / source_side))
