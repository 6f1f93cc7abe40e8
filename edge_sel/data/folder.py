"""Image folders (one subfolder per class, JPEG/PNG) decoded once into a uint8 cache."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from edge_sel.data.dataset import IndexedDataset
from edge_sel.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_SEL_CACHE", Path.home() / ".cache" / "edge-sel"))


def list_class_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(relative file path, label)]) in a sorted, stable order."""
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class subfolders found (expected {root}/<class>/<image>.jpg)")
    files = []
    for label, name in enumerate(classes):
        names = sorted(n for n in os.listdir(root / name)
                       if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
        if not names:
            raise InputError(f"{root / name}: class folder has no images (.jpg/.png)")
        files += [(f"{name}/{n}", label) for n in names]
    return classes, files


def _decode(args: tuple[str, tuple[int, int] | None, str]) -> np.ndarray | str:
    path, size, mode = args   # size: (width, height) to resize to, or None to keep
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != size:
                im = im.resize(size, Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"{path}: cannot decode image ({e.__class__.__name__}: {e})"
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_all(root: Path, files: list[tuple[str, int]], image_size) -> np.ndarray:
    """image_size: None (all images must share the first one's size), S, or (width, height)."""
    from PIL import Image
    first = root / files[0][0]
    try:
        with Image.open(first) as im:
            mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
            size = im.size
    except OSError as e:
        raise InputError(f"{first}: cannot decode image ({e})") from None
    resize = None
    if image_size is not None:
        resize = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        size = resize
    jobs = [(str(root / rel), resize, mode) for rel, _ in files]
    if len(jobs) < 2000 or (os.cpu_count() or 1) < 2:
        decoded = [_decode(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            decoded = list(pool.map(_decode, jobs, chunksize=512))
    for arr, (rel, _) in zip(decoded, files):
        if isinstance(arr, str):
            raise InputError(arr)
        if arr.shape[:2] != (size[1], size[0]):
            raise InputError(f"{root / rel}: image is {arr.shape[1]}x{arr.shape[0]}, the folder's first "
                             f"image is {size[0]}x{size[1]}; pass --image-size to resize all images")
    return np.ascontiguousarray(np.stack(decoded).transpose(0, 3, 1, 2))


def _cache_key(root: Path, files: list[tuple[str, int]], image_size) -> str:
    # File names and folder mtimes: cheap to gather (no per-file stat), and any added, removed or
    # renamed file changes them. An image edited in place needs `rm -r ~/.cache/edge-sel`.
    h = hashlib.sha256(str(root.resolve()).encode())
    h.update(f"{image_size}\n".encode())
    h.update("\n".join(rel for rel, _ in files).encode())
    for d in sorted({rel.split("/", 1)[0] for rel, _ in files}):
        h.update(str(os.stat(root / d).st_mtime_ns).encode())
    return h.hexdigest()[:24]


def load_class_folder(root: Path, name: str, image_size=None,
                      use_cache: bool = True) -> IndexedDataset:
    classes, files = list_class_folder(root)
    key = _cache_key(root, files, image_size)
    cached = cache_dir() / f"folder-{key}.npy"
    images = None
    if use_cache and cached.exists():
        try:
            images = np.load(cached)
            if images.shape[0] != len(files):
                images = None
        except (OSError, ValueError):
            images = None   # a torn cache file is rebuilt, not trusted
    if images is None:
        images = _decode_all(root, files, image_size)
        if use_cache:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".tmp{os.getpid()}.npy")
                np.save(tmp, images)
                os.replace(tmp, cached)
            except OSError:
                pass    # a read-only home only costs a re-decode next time
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return IndexedDataset(torch.from_numpy(images), labels,
                          torch.arange(len(files), dtype=torch.long), classes, name)
