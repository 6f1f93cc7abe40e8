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
    """statistics_distance, its standard error, and the model's logits for `x`, from one pass. The error
    is the spread of the distance over `groups` disjoint groups of the images, over the root of their
    number (None under two images a group): on Lite0 at 96 px, six disjoint draws of 256 clean images
    read +-0.0009 to 0.0019 each and lay within 0.0040 of each other (standard deviation 0.0018);
    under contrast +-0.0024 to 0.0047, within 0.0104 (benchmarks/distance_spread.py)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.running_mean is not None and m.running_var is not None]
    if not len(x):
        return None, None, None
    per_group = len(x) // groups
    seen, seen_groups = [], []

    def hook(module, args):
        a = args[0].detach().float().transpose(0, 1)
        seen.append(float(divergence(a.reshape(a.shape[0], -1), module).mean()))
        if per_group >= 2:      # channels x groups x the rest: each group's divergence, over channels
            g = a[:, :groups * per_group].reshape(a.shape[0], groups, -1).transpose(0, 1)
            seen_groups.append(divergence(g, module).mean(1))

    hooks = [m.register_forward_pre_hook(hook) for m in layers]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x).float()
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if not seen:
        return None, None, logits
    error = None
    if seen_groups:
        by_group = torch.stack(seen_groups).mean(0)
        error = round(float(by_group.std() / groups ** 0.5), 4)
    return round(sum(seen) / len(seen), 4), error, logits


def divergence(a: torch.Tensor, module) -> torch.Tensor:
    """Per channel (the last axis but one), the Kullback-Leibler divergence of a Gaussian fitted to `a`'s
    values (its last axis) from the layer's running statistics."""
    mean, var = a.mean(-1), a.var(-1, unbiased=False) + module.eps
    ref_var = module.running_var.float() + module.eps
    return 0.5 * ((var + (mean - module.running_mean.float()) ** 2) / ref_var - 1 + torch.log(ref_var / var))
