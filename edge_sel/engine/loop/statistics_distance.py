"""How far images are from those a model's BatchNorm statistics were estimated on: each BatchNorm
layer's input over the images, per channel, against the layer's running mean and variance, as the
Kullback-Leibler divergence of the two Gaussians, averaged over channels and layers (one forward pass
in evaluation mode, nothing changed).

A server ships it for its own held-out images beside its recipes; a device measures its images the
same way, on as many. Where the device's is far larger, its camera is not the server's, and the
server's recipes (measured on the server's images) cannot speak for it: the device confirms them on
its own (engine/loop/device_race.py). Running statistics a few steps old are far from any images
(synthetic data, edgecnn after one epoch: 0.66 on the server's own), which the warmup's accuracy on
the device's images, taken in the same pass, does not depend on."""

from __future__ import annotations

import torch
from torch import nn


GROUPS = 8      # disjoint groups of the images whose distances give the figure's sampling noise


def statistics_distance(model: nn.Module, x: torch.Tensor) -> float | None:
    """The mean divergence of `x`'s BatchNorm inputs from the running statistics; None without any
    BatchNorm layer that keeps them."""
    return distance_and_logits(model, x)[0]


def distance_and_logits(model: nn.Module, x: torch.Tensor, groups: int = GROUPS
                        ) -> tuple[float | None, float | None, torch.Tensor | None]:
    """statistics_distance, its standard error, and the model's logits for `x`, from one pass in `groups`
    disjoint groups of the images (each at least two; else one). The error is the spread of the
    groups' distances over the root of their number (None with one group): on Lite0 at 96 px, six
    disjoint draws of 256 clean images of a device's shard read +-0.0010 to 0.0022 each and lay within
    0.0037 of each other (standard deviation 0.0015); under contrast +-0.0018 to 0.0037, within 0.0061
    (benchmarks/distance_spread.py). Each layer's input is reduced per channel as it passes, a group
    at a time, never transposed: Lite0 at 96 px, 256 images on one core, 4.5-4.9 s against 3.7 for the
    forward alone; the whole draw at once with each input transposed and copied took 11-12 s."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.running_mean is not None and m.running_var is not None]
    if not len(x):
        return None, None, None
    parts = torch.tensor_split(x, groups if len(x) >= 2 * groups else 1)
    seen_by: dict[nn.Module, list[tuple[int, torch.Tensor, torch.Tensor]]] = {m: [] for m in layers}

    def hook(module, args):     # per image over its contiguous positions first, then over the images
        a = args[0].detach().float()
        a = a.reshape(*a.shape[:2], -1)
        n = a.shape[0] * a.shape[2]
        mean = a.sum(2).double().sum(0) / n
        var = a.square().sum(2).double().sum(0) / n - mean ** 2
        seen_by[module].append((n, mean, var.clamp_min(0)))

    hooks = [m.register_forward_pre_hook(hook) for m in layers]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(part).float() for part in parts])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    seen = [m for m in layers if seen_by[m]]
    if not seen:
        return None, None, logits
    whole = sum(float(divergence(*pooled(seen_by[m]), m).mean()) for m in seen) / len(seen)
    error = None
    if len(parts) > 1 and all(len(seen_by[m]) == len(parts) for m in seen):     # a layer once a pass
        by_group = torch.tensor([sum(float(divergence(*pooled([seen_by[m][g]]), m).mean()) for m in seen) / len(seen)
                                 for g in range(len(parts))])
        error = round(float(by_group.std() / len(parts) ** 0.5), 4)
    return round(whole, 4), error, logits


def pooled(parts: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the mean and (population) variance of the values of all `parts` (count, mean, variance)."""
    n = sum(count for count, _, _ in parts)
    mean = sum(count * m for count, m, _ in parts) / n
    return mean, (sum(count * (v + (m - mean) ** 2) for count, m, v in parts) / n).clamp_min(0)


def divergence(mean: torch.Tensor, var: torch.Tensor, module) -> torch.Tensor:
    """Per channel, the Kullback-Leibler divergence of a Gaussian of `mean` and `var` from the layer's
    running statistics."""
    var = var.float() + module.eps
    ref_var = module.running_var.float() + module.eps
    return 0.5 * ((var + (mean.float() - module.running_mean.float()) ** 2) / ref_var - 1 + torch.log(ref_var / var))
