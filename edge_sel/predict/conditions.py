"""Which condition's BatchNorm statistics an image is normalised with, read from the image itself.

A bank keeps statistics per condition (the source's first) and a few of each condition's images.
Whole batches of one condition can be matched by the batch's pooled statistics; a camera sends one
frame at a time, and one frame's statistics mostly say what is in view, not how it was filmed.
So each image is described by a few numbers that a condition moves more than content does (per
colour channel: the mean and log variance of its normalised pixels and the log variance of their
3 x 3 Laplacian: noise raises the last, blur lowers it, fog and contrast squeeze the second), and
each condition by a Gaussian over those numbers, fitted on its kept images (full covariance,
slightly shrunk). An image's evidence for a condition is its log-likelihood there, capped so that
no single image decides alone.

- A batch is a set: its mixture of conditions is estimated from the batch itself (a few EM steps),
  and every image takes its most probable condition under that mixture, so a batch of one condition
  agrees on it and a batch that mixes two routes each image to its own.
- A stream is a sequence: a condition persists from frame to frame with probability 1 - 1/W
  (W = `window`, frames), and a frame's condition is the most probable one given every frame so far
  (a hidden Markov model's forward filter). A switch needs about ln W nats of evidence, so a few
  frames of a clearly different condition switch it and a run of one odd-looking class does not.
- An image that lies far from every condition (beyond each one's own images by a margin) is no
  evidence and is normalised with the source's statistics, the safest choice measured: what the
  model does without a bank.

Measured on CIFAR-10 (256 kept images per condition; clean, gaussian_noise:3 and fog:3, with fog's
cloud as it was before it followed the published definition): one image
alone is matched correctly 86% (clean), 99% (noise) and 94% (fog) of the time; a stream of test
images whose classes come in runs of 30, 99.6 / 100 / 98.5% with W = 1000.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from edge_sel.errors import InputError

# The filter's persistence: a condition is expected to last about this many frames.
DEFAULT_WINDOW = 1000
EVIDENCE_CAP = 20.0     # nats: no single image's evidence counts for more
SHRINK = 1e-3           # covariance shrinkage towards its mean variance
OUTLIER_MARGIN = 2.0    # "far": beyond this times a condition's own largest distance
EM_STEPS = 10
FEATURES_PER_CHANNEL = 3
# The 3 x 3 Laplacian as the 5-point stencil it is: (row offset, column offset) -> weight. The
# features, the bank's fingerprints and the FLOPs charged for them all follow it.
LAPLACIAN = {(-1, 0): 1.0, (1, 0): 1.0, (0, -1): 1.0, (0, 1): 1.0, (0, 0): -4.0}
# Per channel, the arithmetic of `_features` on the sums (divisions, squares, logs, the units).
FEATURE_FLOPS_PER_CHANNEL = 20


def check_image_size(h: int, w: int) -> None:
    if h < 3 or w < 3:
        raise InputError(f"images of {h} x {w} pixels are too small for BatchNorm statistics per condition "
                         f"(--bn-conditions): the condition is read from a 3 x 3 Laplacian, which needs at least "
                         f"3 x 3 pixels")


def laplacian(x):
    """The stencil's outputs on the interior of an N x C x H x W batch (numpy or torch): an add per
    term after the first and a multiply per weight other than 1."""
    h, w = x.shape[-2:]
    check_image_size(h, w)
    out = None
    for (dy, dx), weight in LAPLACIAN.items():
        term = x[..., 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]
        term = term if weight == 1 else weight * term
        out = term if out is None else out + term
    return out


def laplacian_flops_per_output() -> int:
    return len(LAPLACIAN) - 1 + sum(weight != 1 for weight in LAPLACIAN.values())


def _features(s1, s2, e1, e2, pixels: int, inner: int, offset, scale) -> np.ndarray:
    """Features from per-channel sums of pixels and Laplacian outputs (and of their squares) of
    images in some units; `offset` and `scale` map those units to normalised ones."""
    mean = s1 / pixels
    var = np.maximum(s2 / pixels - mean * mean, 0.0) * scale ** 2
    edge_mean = e1 / inner
    edge_var = np.maximum(e2 / inner - edge_mean * edge_mean, 0.0) * scale ** 2
    return np.concatenate([mean * scale + offset, np.log(var + 1e-5), np.log(edge_var + 1e-5)], axis=1)


def _sums(x: np.ndarray) -> tuple:
    """Per image and channel: the sums of pixels, of their squares, of the 3 x 3 Laplacian's outputs
    and of their squares, and how many of each."""
    n, c = x.shape[:2]
    flat, edges = x.reshape(n, c, -1), laplacian(x).reshape(n, c, -1)
    return (flat.sum(2), np.einsum("ncp,ncp->nc", flat, flat), edges.sum(2), np.einsum("ncp,ncp->nc", edges, edges),
            flat.shape[2], edges.shape[2])


def image_features(x) -> np.ndarray:
    """N x 3C features of a normalised N x C x H x W batch (see the module's docstring). Plain numpy
    in float64: a frame's features must not wait for a thread pool that other work keeps busy."""
    x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    return _features(*_sums(x), 0.0, 1.0)


def pixel_features(images: torch.Tensor, mean, std) -> np.ndarray:
    """The same features straight from uint8 images (exact integer sums, then the normalisation
    applied to them): what a device computes per frame, without normalising every pixel first."""
    offset, scale = _pixel_units(tuple(mean), tuple(std))
    return _features(*_sums(images.cpu().numpy().astype(np.float64)), offset, scale)


@functools.lru_cache(maxsize=8)
def _pixel_units(mean: tuple, std: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Offset and scale from uint8 pixel units to normalised ones (made once per normalisation)."""
    std_ = np.asarray(std, dtype=np.float64)
    return -np.asarray(mean, dtype=np.float64) / std_, 1.0 / (255.0 * std_)


def feature_flops(input_shape) -> int:
    """FLOPs of one image's features as `pixel_features` computes them: the Laplacian's stencil per
    output, a sum, a square and a sum of squares per pixel and per Laplacian output (a sum counted
    one per element summed), and the per-channel arithmetic on the sums. The distances to K
    conditions are counted by `distance_flops`."""
    c, h, w = input_shape
    check_image_size(h, w)
    inner = c * (h - 2) * (w - 2)
    return laplacian_flops_per_output() * inner + 3 * (c * h * w + inner) + FEATURE_FLOPS_PER_CHANNEL * c


def distance_flops(conditions: int, dims: int) -> int:
    """One image's Mahalanobis distances to every condition (a matrix-vector product each)."""
    return conditions * (2 * dims * dims + 3 * dims)


def normalised(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images as the model takes them, (pixels / 255 - mean[c]) / std[c], float32 on the CPU."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return torch.from_numpy((images.cpu().numpy().astype(np.float32) / 255 - m) / s)


def _logsumexp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


@dataclass
class ConditionModel:
    """A Gaussian over image features, and how far its own images lie from it."""
    mean: np.ndarray            # F
    precision: np.ndarray       # F x F
    logdet: float
    reach: float                # the largest squared Mahalanobis distance of its own images

    @classmethod
    def fit(cls, features: np.ndarray) -> "ConditionModel":
        f = np.asarray(features, dtype=np.float64)
        if len(f) < 2:
            raise ValueError("a condition needs at least 2 images to describe")
        mu = f.mean(0)
        cov = np.atleast_2d(np.cov(f.T))
        cov = cov + SHRINK * np.eye(len(mu)) * max(float(np.diag(cov).mean()), 1e-8)
        precision = np.linalg.inv(cov)
        d = f - mu
        reach = float(((d @ precision) * d).sum(1).max())
        return cls(mu, precision, float(np.linalg.slogdet(cov)[1]), reach)

    def squared_distance(self, features: np.ndarray) -> np.ndarray:
        d = features - self.mean
        return ((d @ self.precision) * d).sum(1)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "precision": self.precision.tolist(), "logdet": self.logdet,
                "reach": self.reach}

    @classmethod
    def from_dict(cls, d: dict) -> "ConditionModel":
        mean = np.asarray(d["mean"], dtype=np.float64)
        precision = np.asarray(d["precision"], dtype=np.float64)
        if mean.ndim != 1 or precision.shape != (len(mean), len(mean)):
            raise ValueError("mean and precision disagree in size")
        logdet, reach = float(d["logdet"]), float(d["reach"])
        if not (np.isfinite(mean).all() and np.isfinite(precision).all() and np.isfinite([logdet, reach]).all()):
            raise ValueError("non-finite mean, precision, log-determinant or reach")
        return cls(mean, precision, logdet, reach)


class ConditionChooser:
    """Chooses a condition per image (index into `names`; 0 is the source) for batches and streams."""

    def __init__(self, names: list[str], models: list[ConditionModel], window: int = DEFAULT_WINDOW):
        if not names or len(names) != len(models):
            raise ValueError("a chooser needs one model per condition")
        if window < 2:
            raise ValueError(f"window must be >= 2 frames, got {window}")
        self.names, self.models, self.window = list(names), list(models), int(window)
        k = len(names)
        stay = 1.0 - 1.0 / window
        move = (1.0 - stay) / (k - 1) if k > 1 else 0.0
        t = np.full((k, k), move)
        np.fill_diagonal(t, stay if k > 1 else 1.0)
        self._transition = t
        self._logdet = np.array([m.logdet for m in models])
        self._reach = np.array([m.reach for m in models])
        self._means = np.stack([m.mean for m in models])            # K x F
        self._precisions = np.stack([m.precision for m in models])  # K x F x F
        self.reset()

    @classmethod
    def from_images(cls, names: list[str], images: list[torch.Tensor], mean, std,
                    window: int = DEFAULT_WINDOW) -> "ConditionChooser":
        return cls(names, [ConditionModel.fit(pixel_features(im, mean, std)) for im in images], window)

    def reset(self) -> None:
        """Forget the stream: the next frame starts from no belief about its condition."""
        k = len(self.names)
        self._belief = np.full(k, 1.0 / k)

    @property
    def belief(self) -> np.ndarray:
        return self._belief.copy()

    def evidence(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Capped log-likelihoods (N x K, the best condition at 0) and whether each image lies
        within reach of some condition."""
        d = features[:, None, :] - self._means[None]                # N x K x F
        d2 = np.einsum("nkf,kfg,nkg->nk", d, self._precisions, d, optimize=False)
        ll = -0.5 * (d2 + self._logdet)
        ll = np.maximum(ll - ll.max(1, keepdims=True), -EVIDENCE_CAP)
        known = (d2 <= OUTLIER_MARGIN * self._reach).any(1)
        return ll, known

    def choose_batch(self, features: np.ndarray) -> torch.Tensor:
        """A set of images: the batch's mixture by EM, then each image's most probable condition."""
        ll, known = self.evidence(features)
        k = len(self.names)
        weights = np.full(k, 1.0 / k)
        for _ in range(EM_STEPS if known.any() else 0):
            post = ll[known] + np.log(weights)
            post = np.exp(post - _logsumexp(post, 1)[:, None])
            weights = (post.sum(0) + 1e-3) / (len(post) + k * 1e-3)
        choice = np.where(known, (ll + np.log(weights)).argmax(1), 0)
        return torch.from_numpy(choice.astype(np.int64))

    def choose_stream(self, features: np.ndarray) -> torch.Tensor:
        """Frames in arrival order: each one's condition given every frame before it and itself."""
        ll, known = self.evidence(features)
        out = np.zeros(len(features), dtype=np.int64)
        belief = self._belief
        for i in range(len(features)):
            belief = belief @ self._transition               # a condition persists or switches
            if known[i]:
                belief = belief * np.exp(ll[i])              # capped evidence: never all zero
                belief = belief / belief.sum()
                out[i] = int(belief.argmax())
        self._belief = np.maximum(belief, 1e-300)
        return torch.from_numpy(out)

    def to_dict(self) -> dict:
        return {"names": self.names, "window": self.window, "models": [m.to_dict() for m in self.models]}

    @classmethod
    def from_dict(cls, d: dict, window: int | None = None) -> "ConditionChooser":
        return cls(list(d["names"]), [ConditionModel.from_dict(m) for m in d["models"]],
                   int(window or d.get("window", DEFAULT_WINDOW)))
