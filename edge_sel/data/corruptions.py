"""Image corruptions of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), at severities 1-5, on uint8
N x C x H x W tensors, following the definitions of the published generation code for 32 x 32 images
(pixelate's two PIL box resizes, contrast toward each channel's mean, defocus reflecting at the
borders, fog's cloud at the image's size with each level's noise shrunk by decay**2). Results are
rounded to uint8 (the published set truncated; tests/test_corruption_fidelity.py keeps every
corruption's mean PSNR within 0.1 dB of the reference's, rounded, on 500 CIFAR-10 test images).

Every random draw for a sample comes from a generator seeded by (seed, the sample's stable index,
the corruption, the severity), so a subset or a shard gets exactly the pixels the full set gets,
and a rerun gets the same bytes. Severity parameters are the published ones for 32 x 32 images;
on other sizes (digits are 8 x 8) blur radii scale with the image side (at least by half).
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# name -> parameter per severity 1..5
SEVERITY = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],       # std on [0, 1] pixels
    "shot_noise": [500, 250, 100, 75, 50],                   # photons per unit intensity
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],         # salt-and-pepper share
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],              # sigma in pixels at 32 x 32
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)],  # disk radius, alias sigma
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],                 # factor towards the image mean
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],               # added to HSV value
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],               # downscale factor
    "jpeg_compression": [80, 65, 58, 50, 40],                # JPEG quality
    "fog": [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)],  # strength, wibble decay
}
CORRUPTIONS = tuple(SEVERITY)


def sample_generator(seed: int | str, index: int, name: str, severity: int) -> torch.Generator:
    key = zlib.crc32(f"{seed}/{index}/{name}/{severity}".encode())
    return torch.Generator().manual_seed(key)


CHUNK = 256     # images corrupted at a time


def corrupt(images: torch.Tensor, index: torch.Tensor, name: str, severity: int, seed: int = 0,
            pool: str = "train") -> torch.Tensor:
    """A corrupted copy of `images` (uint8 N x C x H x W); `index` holds each sample's stable id
    within its `pool`. Training and validation images share one pool (one numbering); the test set
    numbers its images from 0 again, so it draws from a pool of its own: test image i does not get
    training image i's noise field."""
    if name not in SEVERITY:
        raise ValueError(f"unknown corruption {name!r}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1-5, got {severity}")
    c = SEVERITY[name][severity - 1]
    stream = seed if pool == "train" else f"{seed}/{pool}"      # the training pool keeps its old draws
    # A chunk at a time: each image draws from its own generator, so chunks change no pixel, and
    # the float copies stay a chunk's (a 5,000-image validation split at 96 px took 2.4 GB at once).
    out = torch.empty_like(images)
    for start in range(0, len(images), CHUNK):
        x = images[start:start + CHUNK].float().div(255)
        ids = [int(i) for i in index[start:start + CHUNK].tolist()]
        out[start:start + CHUNK] = _APPLY[name](x, c, ids, name, severity, stream).clamp(0, 1).mul(255).round()
    return out


def _per_sample(draw):
    """Applies `draw(x_i, generator)` to every sample with its own generator."""
    def apply(x, c, ids, name, severity, seed):
        return torch.stack([draw(xi, c, sample_generator(seed, i, name, severity)) for xi, i in zip(x, ids)]) \
            if len(x) else x
    return apply


def _gaussian_noise(x, c, g):
    return x + torch.randn(x.shape, generator=g) * c


def _shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x, c, g):
    u = torch.rand(x.shape, generator=g)
    out = x.clone()
    out[u < c / 2] = 0.0
    out[(u >= c / 2) & (u < c)] = 1.0
    return out


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _filter(x: torch.Tensor, kernel2d: torch.Tensor, border: str) -> torch.Tensor:
    """Same-size 2-D filtering of every channel; `border` is F.pad's mode ("replicate" repeats the
    edge pixel, "reflect" mirrors without repeating it)."""
    n, ch = x.shape[:2]
    kh, kw = kernel2d.shape
    weight = kernel2d.expand(ch, 1, kh, kw)
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=border)
    return F.conv2d(padded, weight, groups=ch)


def _scale(x: torch.Tensor) -> float:
    # Parameters are for 32 x 32 images; on smaller ones a blur shrinks with the side, but not below
    # half its size, or an 8 x 8 image would not change at all.
    return max(0.5, x.shape[-1] / 32.0)


def _gaussian_blur(x, c, ids, name, severity, seed):
    k = _gaussian_kernel(max(1e-3, c * _scale(x)))
    return _filter(x, torch.outer(k, k), "replicate")      # the reference's Gaussian repeats the edge


def _defocus_blur(x, c, ids, name, severity, seed):
    radius, alias = c[0] * _scale(x), c[1] * _scale(x)
    r = max(1, int(np.ceil(radius)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= max(radius, 0.5) ** 2).float()
    g = _gaussian_kernel(max(alias, 1e-3))
    smooth = F.conv2d(F.pad(disk[None, None], (len(g) // 2,) * 4), torch.outer(g, g)[None, None])[0, 0]
    # The reference filters with OpenCV's default border, a reflection that does not repeat the edge.
    return _filter(x, smooth / smooth.sum(), "reflect")


def _contrast(x, c, ids, name, severity, seed):
    means = x.mean(dim=(2, 3), keepdim=True)             # each channel's own mean: colour is kept
    return (x - means) * c + means


def _brightness(x, c, ids, name, severity, seed):
    # HSV value is the largest channel; scaling every channel by one factor moves V and keeps hue
    # and saturation, so V + c is reached by a per-pixel factor.
    v = x.max(dim=1, keepdim=True).values
    target = (v + c).clamp(max=1.0)
    factor = torch.where(v > 0, target / v.clamp_min(1e-6), torch.ones_like(v))
    out = x * factor
    # Black pixels have no hue: they become grey at the new value.
    return torch.where(v > 0, out, target.expand_as(x))


def _pixelate(x, c, ids, name, severity, seed):
    # The reference's two PIL BOX resizes of the 8-bit image: down to int(side * c) pixels (a pixel
    # averages the source pixels whose centres it covers; torch's "area" differs at non-integer
    # ratios), then back up (at a ratio under one, the source pixel under each centre).
    h, w = x.shape[-2:]
    small = (max(1, int(w * c)), max(1, int(h * c)))
    out = [np.asarray(_pil(xi).resize(small, Image.BOX).resize((w, h), Image.BOX), dtype=np.float32) / 255
           for xi in x]
    return torch.from_numpy(np.stack(out)).reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2) if out else x


def _pil(xi: torch.Tensor) -> Image.Image:
    """One C x H x W image in [0, 1] as an 8-bit PIL image (grey for one channel)."""
    arr = (xi.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def _jpeg(x, c, ids, name, severity, seed):
    out = []
    for xi in x:
        buf = io.BytesIO()
        _pil(xi).save(buf, format="JPEG", quality=int(c))
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
        back = back[..., None] if back.ndim == 2 else back
        out.append(torch.from_numpy(back).permute(2, 0, 1))
    return torch.stack(out) if out else x


def plasma(size: int, decay: float, generators: list[torch.Generator]) -> torch.Tensor:
    """One size x size fractal cloud in [0, 1] per generator (len(generators) x size x size), by the
    diamond-square algorithm (size a power of two). As in the reference, a level's noise is
    wibble * uniform(-wibble, wibble), with wibble divided by `decay` per level: the amplitude
    shrinks by decay**2. Each cloud draws from its own generator only, in one fixed order."""
    grid = torch.zeros(len(generators), size, size)

    def noise(shape):
        return torch.stack([2 * torch.rand(shape, generator=g) - 1 for g in generators])

    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        # Square step: each square's centre from its four corners (wrapping around).
        corners = grid[:, 0:size:step, 0:size:step]
        mean = (corners + corners.roll(-1, 1) + corners.roll(-1, 2) + corners.roll((-1, -1), (1, 2))) / 4
        grid[:, half:size:step, half:size:step] = mean + wibble ** 2 * noise(mean.shape[1:])
        # Diamond step: edge midpoints from their neighbours.
        for dy, dx in ((0, half), (half, 0)):
            ys, xs = torch.arange(dy, size, step), torch.arange(dx, size, step)
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            nb = (grid[:, (yy - half) % size, xx] + grid[:, (yy + half) % size, xx] +
                  grid[:, yy, (xx - half) % size] + grid[:, yy, (xx + half) % size]) / 4
            grid[:, yy, xx] = nb + wibble ** 2 * noise(nb.shape[1:])
        step, wibble = half, wibble / decay
    grid -= grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def _fog(x, c, ids, name, severity, seed):
    if not len(x):
        return x
    h, w = x.shape[-2:]
    size = 1 << (max(h, w, 2) - 1).bit_length()          # the next power of two: 32 for 32 x 32
    cloud = plasma(size, c[1], [sample_generator(seed, i, name, severity) for i in ids])[:, None, :h, :w]
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + c[0] * cloud) * top / (top + c[0])


_APPLY = {
    "gaussian_noise": _per_sample(_gaussian_noise),
    "shot_noise": _per_sample(_shot_noise),
    "impulse_noise": _per_sample(_impulse_noise),
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
    "fog": _fog,
}
