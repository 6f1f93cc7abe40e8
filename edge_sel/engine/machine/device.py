"""Device choice (cuda > mps > cpu) and the seeding that makes CPU runs repeatable."""

from __future__ import annotations

import random

import numpy as np
import torch

from edge_sel.errors import InputError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: MPS is not available on this machine (use cpu or auto)")
    return torch.device(name)


def random_streams_kept(device: torch.device):
    """A fork of torch's random streams (the CPU's, and the device's on CUDA) for a probe that runs
    the model in training mode: its dropout would otherwise draw the run's masks, so a run that probed
    would train with other masks than the same run whose choice was pinned or cached."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that orders and augments the data."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
