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

Measured on CIFAR-10 (256 kept images per condition; clean, gaussian_noise:3 and fog:3): one image
alone is matched correctly 86% (clean), 99% (noise) and 94% (fog) of the time; a stream of test
images whose classes come in runs of 30, 99.6 / 100 / 98.5% with W = 1000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The filter's persistence: a condition is expected to last about this many frames.
DEFAULT_WINDOW = 1000
EVIDENCE_CAP = 20.0     # nats: no single image's evidence counts for more
SHRINK = 1e-3           # covariance shrinkage towards its mean variance
OUTLIER_MARGIN = 2.0    # "far": beyond this times a condition's own largest distance
EM_STEPS = 10
FEATURES_PER_CHANNEL = 3


def image_features(x: torch.Tensor) -> torch.Tensor:
    """N x 3C features of a normalised N x C x H x W batch (see the module's docstring)."""
    x = x.float()
    c = x.shape[1]
    kernel = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]], device=x.device).expand(c, 1, 3, 3)
    edges = torch.nn.functional.conv2d(x, kernel, groups=c)
    return torch.cat([x.mean((2, 3)),
                      torch.log(x.var((2, 3), unbiased=False) + 1e-5),
                      torch.log(edges.var((2, 3), unbiased=False) + 1e-5)], dim=1).double().cpu()


def feature_flops(input_shape) -> int:
    """FLOPs of one image's features: the depthwise Laplacian (9 multiply-adds per output), a sum, a
    square and a sum of squares per pixel and per Laplacian output, and the distances to K
    conditions are counted by `distance_flops`."""
    c, h, w = input_shape
    inner = c * (h - 2) * (w - 2)
    return 18 * inner + 3 * (c * h * w + inner)


def distance_flops(conditions: int, dims: int) -> int:
    """One image's Mahalanobis distances to every condition (a matrix-vector product each)."""
    return conditions * (2 * dims * dims + 3 * dims)


def normalised(images: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float().cpu() / 255 - m) / s


@dataclass
class ConditionModel:
    """A Gaussian over image features, and how far its own images lie from it."""
    mean: torch.Tensor          # F
    precision: torch.Tensor     # F x F
    logdet: float
    reach: float                # the largest squared Mahalanobis distance of its own images

    @classmethod
    def fit(cls, features: torch.Tensor) -> "ConditionModel":
        f = features.double()
        if len(f) < 2:
            raise ValueError("a condition needs at least 2 images to describe")
        mu = f.mean(0)
        cov = torch.cov(f.T).reshape(len(mu), len(mu))
        cov = cov + SHRINK * torch.eye(len(mu), dtype=torch.float64) * cov.diagonal().mean().clamp(min=1e-8)
        precision = torch.linalg.inv(cov)
        d = f - mu
        reach = float(((d @ precision) * d).sum(1).max())
        return cls(mu, precision, float(torch.logdet(cov)), reach)

    def squared_distance(self, features: torch.Tensor) -> torch.Tensor:
        d = features.double() - self.mean
        return ((d @ self.precision) * d).sum(1)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "precision": self.precision.tolist(), "logdet": self.logdet,
                "reach": self.reach}

    @classmethod
    def from_dict(cls, d: dict) -> "ConditionModel":
        mean = torch.tensor(d["mean"], dtype=torch.float64)
        precision = torch.tensor(d["precision"], dtype=torch.float64)
        if mean.dim() != 1 or precision.shape != (len(mean), len(mean)):
            raise ValueError("mean and precision disagree in size")
        if not (torch.isfinite(mean).all() and torch.isfinite(precision).all()):
            raise ValueError("non-finite mean or precision")
        return cls(mean, precision, float(d["logdet"]), float(d["reach"]))


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
        t = torch.full((k, k), move, dtype=torch.float64)
        t.fill_diagonal_(stay if k > 1 else 1.0)
        self._log_transition = torch.log(t.clamp(min=1e-300))
        self.reset()

    @classmethod
    def from_images(cls, names: list[str], images: list[torch.Tensor], mean, std,
                    window: int = DEFAULT_WINDOW) -> "ConditionChooser":
        return cls(names, [ConditionModel.fit(image_features(normalised(im, mean, std))) for im in images], window)

    def reset(self) -> None:
        """Forget the stream: the next frame starts from no belief about its condition."""
        k = len(self.names)
        self._belief = torch.full((k,), -math.log(k), dtype=torch.float64)

    @property
    def belief(self) -> torch.Tensor:
        return self._belief.exp()

    def evidence(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Capped log-likelihoods (N x K, the best condition at 0) and whether each image lies
        within reach of some condition."""
        d2 = torch.stack([m.squared_distance(features) for m in self.models], dim=1)
        logdet = torch.tensor([m.logdet for m in self.models], dtype=torch.float64)
        ll = -0.5 * (d2 + logdet)
        ll = (ll - ll.max(1, keepdim=True).values).clamp(min=-EVIDENCE_CAP)
        reach = torch.tensor([m.reach for m in self.models], dtype=torch.float64)
        known = (d2 <= OUTLIER_MARGIN * reach).any(1)
        return ll, known

    def choose_batch(self, features: torch.Tensor) -> torch.Tensor:
        """A set of images: the batch's mixture by EM, then each image's most probable condition."""
        ll, known = self.evidence(features)
        k = len(self.names)
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        for _ in range(EM_STEPS if known.any() else 0):
            post = torch.softmax(ll[known] + weights.log(), dim=1)
            weights = (post.sum(0) + 1e-3) / (len(post) + k * 1e-3)
        choice = (ll + weights.log()).argmax(1)
        return torch.where(known, choice, torch.zeros_like(choice))

    def choose_stream(self, features: torch.Tensor) -> torch.Tensor:
        """Frames in arrival order: each one's condition given every frame before it and itself."""
        ll, known = self.evidence(features)
        out = torch.zeros(len(features), dtype=torch.long)
        belief = self._belief
        for i in range(len(features)):
            belief = torch.logsumexp(belief[:, None] + self._log_transition, dim=0)
            if known[i]:
                belief = belief + ll[i]
                belief = belief - torch.logsumexp(belief, 0)
                out[i] = int(belief.argmax())
        self._belief = belief
        return out

    def to_dict(self) -> dict:
        return {"names": self.names, "window": self.window, "models": [m.to_dict() for m in self.models]}

    @classmethod
    def from_dict(cls, d: dict, window: int | None = None) -> "ConditionChooser":
        return cls(list(d["names"]), [ConditionModel.from_dict(m) for m in d["models"]],
                   int(window or d.get("window", DEFAULT_WINDOW)))
