"""What a budgeted run adds to the process besides the tensors it counts, measured before the plan
commits: the code and caches torch's kernels fault in on their first use (the first forward, backward
and evaluation), and what planning itself leaves. On digits' edgecnn they were 31 MiB of a run's
35 MiB measured training peak against an 8 MiB count: the plan fits its count in what is left of the
budget, or the run is refused naming the smallest budget that holds."""

from __future__ import annotations

import copy
import os

import torch

from edge_sel.backends.torch_backend import freeze_batchnorm_stats
from edge_sel.core import measuring
from edge_sel.core.lean_saves import set_saves
from edge_sel.core.memory import MiB, StepShape
from edge_sel.data.augment import normalize
from edge_sel.engine.machine import peak_memory
from edge_sel.engine.machine.device import random_streams_kept

GIVEN = "EDGE_SEL_PROCESS_GROWTH_MB"
ROWS = 2            # BatchNorm in train mode needs two images


def warm_kernels(trainer, trainable: set[str] | None = None, shape: StepShape | None = None) -> None:
    """One forward and backward of ROWS local images in train mode, training `trainable` (parameter
    names; None: every parameter), and one forward in inference mode, so the kernels the run's steps
    and evaluations use are loaded now; weights, BatchNorm statistics and the random streams are left
    as they were, gradients dropped. With a planned `shape`, the backward is one micro-batch of its
    rows as the plan runs it (its saves, recomputed blocks and statistics): a step's kernels are kept
    per shape (oneDNN's primitives), and the plan's are loaded before the growth it fits beside is
    measured."""
    model, ds = trainer.model, trainer.train_ds
    rows = ROWS if shape is None else min(shape.chunk, len(ds))
    frozen = shape is not None and shape.bn_statistics == "frozen"
    if len(ds) < rows or rows < (1 if frozen else ROWS):      # statistics that train need ROWS images
        return
    positions = torch.arange(rows, device=ds.images.device)
    mean, std = (torch.as_tensor(v, device=positions.device) for v in (trainer.mean, trainer.std))
    x = normalize(ds.pixels(positions), mean, std)
    buffers = copy.deepcopy(dict(model.named_buffers()))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    with random_streams_kept(x.device):
        try:
            model.train()
            if shape is not None:
                set_saves(model, shape.recompute, shape.lean)
                if shape.bn_statistics == "frozen":
                    freeze_batchnorm_stats(model)
            for n, p in model.named_parameters():
                p.requires_grad_(trainable is None or n in trainable)
            model(x).float().logsumexp(1).mean().backward()
            with torch.inference_mode():
                model.eval()
                model(x[:ROWS])
        finally:
            set_saves(model)
            model.zero_grad(set_to_none=True)
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
            model.train(was_training)


def grown_mb(trainer) -> float:
    """MiB the run's memory grew over its level before training, measured: on a CPU the process's
    resident size (rss) after glibc's free pages go back; on a GPU what torch's CUDA allocator holds
    (cuda-allocated), which keeps what the first passes left for the process: cuBLAS's workspaces (Lite0
    at 128 px on an H200, 65.0 MiB at torch's default size; a budgeted run asks them small,
    engine/machine/cuda_workspace.py). 0 where nothing is measured. EDGE_SEL_PROCESS_GROWTH_MB gives it
    instead (a device whose growth is known; runs whose plans must not depend on what ran before)."""
    if measuring.in_child():            # the growth of the run this child measures for
        return measuring.child_growth_mb[0]
    given = os.environ.get(GIVEN)
    if given:
        return float(given)
    meter, base = trainer.run_memory.meter, trainer.run_memory.base
    if base is None or meter.method == "unavailable":
        return 0.0
    if meter.method.startswith("rss"):
        peak_memory.release_free_heap()
    return max(0.0, ((meter.level() or base) - base) / MiB)
