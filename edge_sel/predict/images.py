"""The images a device is asked about: files and directories, in arrival order (file-name order),
each decoded and checked against the model's input before anything is predicted from it."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edge_sel.data.folder import not_an_input, skipped_note
from edge_sel.data.resize import resize_pixels
from edge_sel.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}


def list_images(paths: list[Path]) -> list[Path]:
    """Files as given; a directory's images (all levels below it) in file-name order."""
    if not paths:
        raise InputError("predict: name at least one image file or directory")
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                           key=lambda f: f.relative_to(p).as_posix())
            # A file named on the command line is read whatever its name; one found in a directory
            # is skipped when hidden (in a hidden folder too) or edge-sel's own output.
            skipped = [f for f in found if any(not_an_input(part) for part in f.relative_to(p).parts)]
            found = [f for f in found if f not in skipped]
            note = skipped_note(p, [f.relative_to(p).as_posix() for f in skipped])
            if note:
                warnings.warn(note)
            if not found:
                raise InputError(f"{p}: no image files in this directory")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    return out


def read_image(path: Path, input_shape: list[int], resize: bool) -> torch.Tensor:
    """uint8 C x H x W as the model takes it; a file that is not an image, or of another size
    (unless `resize`), is refused in one line naming it."""
    try:
        with Image.open(path) as im:
            return pil_pixels(im, input_shape, resize, str(path))
    # Pillow raises SyntaxError for a PNG chunk whose checksum fails, EOFError for a cut file.
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def pil_pixels(im: Image.Image, input_shape: list[int], resize: bool, where: str) -> torch.Tensor:
    """A PIL image as uint8 C x H x W pixels for the model (`where` names it in a refusal)."""
    c, h, w = input_shape
    if c not in (1, 3):
        raise InputError(f"{where}: the model takes {c}-channel images; only 1 and 3 can be read from files")
    im = im.convert("L" if c == 1 else "RGB")
    if im.size != (w, h):
        if not resize:
            raise InputError(f"{where}: image is {im.size[0]}x{im.size[1]}, the model takes {w}x{h} "
                             f"(--resize to scale it)")
    a = np.array(im, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    # The resize a run gives its batches (data/resize.py), so a model sees a file as it trained.
    return resize_pixels(torch.from_numpy(np.ascontiguousarray(a))[None], (h, w))[0]


PIXEL_SLACK = 1e-3      # rounding of a float image in 0-1 times 255 (float32 k/255 x 255 is k within 3e-5)


def as_pixels(images, input_shape: list[int], scale: float | None = None) -> torch.Tensor:
    """What `Predictor.predict` is given, as an N x C x H x W batch of pixels in 0-255 (uint8, or
    float32 where `scale` was applied): a tensor or numpy array (C x H x W or N x C x H x W), a PIL
    image, an image file or directory, or a list of those. Floats are pixels only with an explicit
    `scale` (255 for images in 0-1): taken as they are, a 0-1 image is a black one."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("an empty batch: give at least one image")
        if all(isinstance(i, (str, os.PathLike, Image.Image)) for i in images):
            return torch.stack(_decoded(images, input_shape))
        try:
            images = torch.stack([_tensor(i) for i in images])
        except RuntimeError as e:
            raise InputError(f"images of different shapes: {str(e).splitlines()[0]}") from None
    x = _tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f"images of shape {list(x.shape)}: give one image (C x H x W) or a batch (N x C x H x W) "
                         f"of C x H x W = {list(input_shape)}")
    if len(x) == 0:
        raise InputError(f"an empty batch (shape {list(x.shape)}): give at least one image")
    if list(x.shape[1:]) != list(input_shape):
        raise InputError(f"images of shape {list(x.shape[1:])}: the model takes {list(input_shape)}")
    if scale is None and x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool or x.is_complex() or (scale is None and x.is_floating_point()):
        raise InputError(f"images of dtype {str(x.dtype).removeprefix('torch.')}: pixels are uint8 (0-255); for "
                         f"floats in 0-1 pass scale=255 (pixels = images x scale)")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise InputError(f"scale={scale!r}: give the positive factor that makes pixels of 0-255 (255 for images "
                         f"in 0-1)")
    pixels = x.double() * (1 if scale is None else scale)
    low, high = float(pixels.min()), float(pixels.max())
    if not (math.isfinite(low) and math.isfinite(high)) or low < -PIXEL_SLACK or high > 255 + PIXEL_SLACK:
        said = f" after scale={scale:g}" if scale is not None else ""
        raise InputError(f"images of dtype {str(x.dtype).removeprefix('torch.')} span {low:g} to {high:g}{said}: "
                         f"pixels are 0-255" + ("" if scale is not None else "; pass scale= to map them"))
    if scale is None:
        return pixels.to(torch.uint8)           # integers in 0-255: exactly the uint8 pixels
    return pixels.clamp(0, 255).float()


def _tensor(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.detach().cpu()
    try:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(images)))
    except (TypeError, ValueError):     # numpy keeps anything else as objects, which torch cannot hold
        raise InputError(f"images of type {type(images).__name__}: give a tensor, a numpy array, a PIL image or an "
                         f"image file") from None


def _decoded(items, input_shape) -> list[torch.Tensor]:
    out = []
    for item in items:
        if isinstance(item, Image.Image):
            out.append(pil_pixels(item, list(input_shape), False, f"PIL image {item.size[0]}x{item.size[1]}"))
        else:
            out.extend(read_image(f, list(input_shape), False) for f in list_images([Path(item)]))
    return out
