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


def statistics_distance(model: nn.Module, x: torch.Tensor) -> float | None:
    """The mean divergence of `x`'s BatchNorm inputs from the running statistics; None without any
    BatchNorm layer that keeps them."""
    return distance_and_logits(model, x)[0]


def distance_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[float | None, torch.Tensor | None]:
    """statistics_distance, and the model's logits for `x` from the same pass."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.running_mean is not None and m.running_var is not None]
    if not len(x):
        return None, None
    seen = []

    def hook(module, args):
        a = args[0].detach().float().transpose(0, 1).reshape(args[0].shape[1], -1)
        mean, var = a.mean(1), a.var(1, unbiased=False) + module.eps
        ref_var = module.running_var.float() + module.eps
        kl = 0.5 * ((var + (mean - module.running_mean.float()) ** 2) / ref_var - 1 + torch.log(ref_var / var))
        seen.append(float(kl.mean()))

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
    return (round(sum(seen) / len(seen), 4) if seen else None), logits
