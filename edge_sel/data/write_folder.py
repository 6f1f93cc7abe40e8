"""Write a dataset (e.g. a shifted copy) as an image folder that `--dataset folder:PATH` reads back,
and a contact sheet of every corruption at every severity, so a user can look at the data."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

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
            _pil(ds.pixels(p[None])[0]).save(folder / f"{int(ds.index[p]):06d}.png")
            written += 1
    return written


SHEET_TILE_PX = 48      # smallest drawn image side: 8x8 digits are unreadable at 2x
SHEET_GAP_PX = 6        # between severity blocks


def contact_sheet(ds: IndexedDataset, path: Path, samples: int = 4, seed: int = 0, scale: int | None = None) -> Path:
    """Rows: the clean image, then each corruption, each row named; columns: severity 1..5, a few
    samples each. Images are enlarged (nearest neighbour) to at least SHEET_TILE_PX pixels a side."""
    labels = ds.labels.cpu()
    # One sample of each of the first classes: the first few samples are often all of one class.
    picks = torch.stack([(labels == c).nonzero()[0, 0] for c in labels.unique()[:samples]])
    clean = ds.pixels(picks).cpu()
    rows = [[clean] * 5]
    for name in CORRUPTIONS:
        rows.append([corrupt(clean, ds.index[picks].cpu(), name, s, seed) for s in range(1, 6)])
    n, ch, h, w = clean.shape
    scale = scale or max(2, -(-SHEET_TILE_PX // min(h, w)))
    tile_w, tile_h = w * scale * n, h * scale          # one severity block: the samples side by side
    names = corruption_names_for_sheet()
    font = ImageFont.load_default()
    left = 12 + max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(t, font=font)) for t in names)
    top = 22
    sheet = Image.new("RGB", (left + 5 * (tile_w + SHEET_GAP_PX), top + len(rows) * (tile_h + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for col in range(5):
        draw.text((left + col * (tile_w + SHEET_GAP_PX) + tile_w // 2, top // 2), f"severity {col + 1}",
                  fill="black", font=font, anchor="mm")
    for r, (label, row) in enumerate(zip(names, rows)):
        y = top + r * (tile_h + 4)
        draw.text((left - 6, y + tile_h // 2), label, fill="black", font=font, anchor="rm")
        for col, batch in enumerate(row):
            block = _pil(torch.cat(list(batch), dim=2)).convert("RGB")
            block = block.resize((tile_w, tile_h), Image.NEAREST)
            sheet.paste(block, (left + col * (tile_w + SHEET_GAP_PX), y))
    sheet.save(path)
    return Path(path)


def corruption_names_for_sheet() -> list[str]:
    return ["clean", *CORRUPTIONS]
