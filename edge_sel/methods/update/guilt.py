"""The guilt threshold of SEL's gradient mask: g0 = p-th percentile of |grad| over every parameter
entry on calibration batches, shrunk per stage: g_s = g0 * (1 - decay * s / stages)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.data import BatchLoader


def percentile(values: torch.Tensor, q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default), exact for any size.
    torch.quantile refuses inputs above 2**24 entries, and kthvalue's selection can degrade to
    quadratic time on ordered or tied inputs (gradients have many ties), so sort: O(n log n)."""
    v = values.detach().flatten().float()
    n = v.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = q / 100 * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    ordered = v.sort().values
    a, b = ordered[lo].item(), ordered[hi].item()
    return a + (pos - lo) * (b - a)


def stage_threshold(g0: float, stage_index: int, decay: float, num_stages: int = 5) -> float:
    """g_s for the 0-based curriculum stage `stage_index` (the seed: 5 stages, decay 0.3)."""
    return g0 * (1 - decay * stage_index / max(1, num_stages))


def calibrate(model: nn.Module, ctx, samples: int, q: float, seed: int) -> dict:
    """g0 from one training step's gradients (no optimizer step) of `model` in train mode on
    `samples` training samples, augmented like training. Works on a copy: the live model's
    weights and BN statistics are untouched. Returns g0 and the counted FLOPs of that step."""
    twin = copy.deepcopy(model).train()
    for p in twin.parameters():
        p.requires_grad_(True)
    n = min(samples, len(ctx.train))
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    positions = torch.randperm(len(ctx.train), generator=torch.Generator().manual_seed(seed))[:n]
    loader = BatchLoader(ctx.train, ctx.mean, ctx.std, n, bool(ctx.config.get("augment", True)), generator)
    batch = next(iter(loader.batches(positions)))
    loss = nn.functional.cross_entropy(twin(batch.x), batch.y)
    loss.backward()
    grads = torch.cat([p.grad.abs().flatten() for p in twin.parameters() if p.grad is not None])
    g0 = percentile(grads, q)
    forward, backward = FlopCounter(twin, ctx.train.input_shape).train_step(n)
    return {"g0": g0, "samples": n, "flops": forward + backward, "entries": grads.numel()}
