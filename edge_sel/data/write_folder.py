"""Write a dataset (e.g. a shifted copy) as an image folder that `--dataset folder:PATH` reads back,
and a contact sheet of every corruption at every severity, so a user can look at the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edge_sel.data.corruptions import CORRUPTIONS, corrupt
from edge_sel.data.dataset import IndexedDataset


def _pil(image: torch.Tensor) -> Image.Image:
    arr = image.cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def write_image_folder(ds: IndexedDataset, root: Path, limit: int | None = None) -> int:
    """root/<class>/<sample id>.png for every sample (the first `limit` per class); PNG is lossless,
    so the folder reads back as exactly these pixels. Returns the number of files written."""
    written = 0
    for c, name in enumerate(ds.class_names):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        positions = (ds.labels.cpu() == c).nonzero().squeeze(1)
        for p in positions[:limit] if limit else positions:
            _pil(ds.images[p]).save(folder / f"{int(ds.index[p]):06d}.png")
            written += 1
    return written


def contact_sheet(ds: IndexedDataset, path: Path, samples: int = 4, seed: int = 0, scale: int = 2) -> Path:
    """Rows: the clean image, then each corruption; columns: severity 1..5, for a few samples."""
    picks = torch.arange(min(samples, len(ds)))
    clean = ds.images[picks].cpu()
    rows = [[clean] * 5]
    for name in CORRUPTIONS:
        rows.append([corrupt(clean, ds.index[picks].cpu(), name, s, seed) for s in range(1, 6)])
    n, ch, h, w = clean.shape
    tile = lambda batch: torch.cat(list(batch), dim=2)  # noqa: E731  (samples side by side)
    grid = torch.cat([torch.cat([tile(b) for b in row], dim=2) for row in rows], dim=1)
    image = _pil(grid)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return Path(path)


def corruption_names_for_sheet() -> list[str]:
    return ["clean", *CORRUPTIONS]


def as_array(ds: IndexedDataset) -> np.ndarray:
    return ds.images.cpu().numpy()
