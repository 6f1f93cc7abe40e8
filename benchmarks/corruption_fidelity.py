"""edge-sel's CIFAR-10-C corruptions beside the reference generation code's, by mean PSNR.

    python benchmarks/corruption_fidelity.py [--data ../shared/data/cifar10-jpeg] [--seeds 8]

Corrupts the reference's 500 images (the first 50 files, in sorted name order, of each class folder
of the CIFAR-10 test set) at severities 1, 3 and 5 with `corrupt(..., seed=0, pool="test")` and
prints each corruption's mean PSNR (dB, against the clean image) beside the figure the reference
code gives when its images are rounded to 8 bits, as edge-sel rounds them. Random corruptions are
compared by their mean over the 500 draws; with `--seeds N` (N > 1) each figure is the mean over N
seeds of 500 draws, with its standard error (one image's fog PSNR varies by about 2 dB from draw to
draw, so one draw of 500 is good to about 0.1 dB, and so is the reference's own figure).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edge_sel.data.corruptions import CORRUPTIONS, corrupt

SEVERITIES = (1, 3, 5)
# Mean PSNR (dB) of the reference code's output, stored rounded, on the same 500 images.
REFERENCE = {
    "gaussian_noise": (28.10, 22.21, 20.34),
    "shot_noise": (30.48, 23.62, 20.73),
    "impulse_noise": (25.16, 20.31, 16.59),
    "gaussian_blur": (43.30, 29.29, 25.80),
    "defocus_blur": (42.96, 31.26, 25.87),
    "contrast": (26.30, 18.70, 15.67),
    "brightness": (27.32, 18.17, 12.69),
    "pixelate": (32.90, 29.34, 25.69),
    "jpeg_compression": (40.02, 31.73, 28.65),
    "fog": (26.05, 17.91, 14.85),
}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def reference_images(root: Path, per_class: int = 50) -> torch.Tensor:
    """uint8 N x 3 x 32 x 32: the first `per_class` files of each test class folder, sorted."""
    files = [f for d in sorted((root / "test").iterdir()) if d.is_dir() for f in sorted(d.iterdir())[:per_class]]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def psnr(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """Each image's PSNR (dB) against its clean original, both uint8."""
    mse = (corrupted.double() - clean.double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0 ** 2 / mse)


def measure(images: torch.Tensor, name: str, seed: int = 0) -> list[torch.Tensor]:
    """Per-image PSNR of `name` at each of SEVERITIES, as the reference's images are numbered."""
    index = torch.arange(len(images))
    return [psnr(images, corrupt(images, index, name, s, seed=seed, pool="test")) for s in SEVERITIES]


def mean_over_seeds(images: torch.Tensor, name: str, seeds: int) -> tuple[list[float], list[float]]:
    """Mean PSNR at each severity over `seeds` draws of every image, and its standard error."""
    draws = torch.tensor([[float(p.mean()) for p in measure(images, name, seed)] for seed in range(seeds)])
    spread = draws.std(dim=0) / seeds ** 0.5 if seeds > 1 else torch.zeros(len(SEVERITIES))
    return draws.mean(dim=0).tolist(), spread.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a CIFAR-10 image folder (test/<class>/*.jpg)")
    parser.add_argument("--seeds", type=int, default=1, help="draws of the random corruptions to average (default 1)")
    parser.add_argument("--only", default=None, help="comma-separated corruptions (default: all)")
    args = parser.parse_args()
    images = reference_images(args.data)
    names = args.only.split(",") if args.only else list(CORRUPTIONS)
    print("| corruption | edge-sel 1 / 3 / 5 | standard error | reference 1 / 3 / 5 | largest gap (dB) |")
    print("|---|---|---|---|---|")
    for name in names:
        ours, error = mean_over_seeds(images, name, args.seeds)
        gap = max(abs(a - b) for a, b in zip(ours, REFERENCE[name]))
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in ours)} | {' / '.join(f'{v:.2f}' for v in error)} | "
              f"{' / '.join(f'{v:.2f}' for v in REFERENCE[name])} | {gap:.2f} |", flush=True)


if __name__ == "__main__":
    main()
