"""The images a device is asked about: files and directories, in arrival order (file-name order),
each decoded and checked against the model's input before anything is predicted from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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
    c, h, w = input_shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                if not resize:
                    raise InputError(f"{path}: image is {im.size[0]}x{im.size[1]}, the model takes {w}x{h} "
                                     f"(--resize to scale it)")
                im = im.resize((w, h), Image.BILINEAR)
            a = np.array(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    if c not in (1, 3):
        raise InputError(f"{path}: the model takes {c}-channel images; only 1 and 3 can be read from files")
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))
