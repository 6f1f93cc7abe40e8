"""Running a model with one condition's BatchNorm statistics, or each image with its own.

The statistics are lent to the BatchNorm layers by reference for the length of a forward pass and
the layers' own buffers are put back after it: nothing is copied, so a switch costs a few attribute
assignments, and the model's state dict never holds a borrowed condition's statistics. A lock
makes one model safe to share between threads.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn


def named_batchnorm(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class StatisticsSwitch:
    """Lends per-condition statistics (layer name -> (mean, var)) to a model's BatchNorm layers."""

    def __init__(self, model: nn.Module):
        self.layers = named_batchnorm(model)
        self.names = [n for n, _ in self.layers]
        self.buffers = [m._buffers for _, m in self.layers]
        self.lock = threading.RLock()

    @contextmanager
    def lent(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        # The layers' buffer dictionaries are written directly: Module.__setattr__ costs microseconds
        # per call, which over every layer was a fifth of a small model's forward at batch 1.
        with self.lock:
            own = [(b["running_mean"], b["running_var"]) for b in self.buffers]
            try:
                for name, b in zip(self.names, self.buffers):
                    b["running_mean"], b["running_var"] = stats[name]
                yield
            finally:
                for b, (mean, var) in zip(self.buffers, own):
                    b["running_mean"], b["running_var"] = mean, var

    def forward(self, forward, x: torch.Tensor, choice: torch.Tensor, stats: list[dict]) -> torch.Tensor:
        """`forward(x)` with image i normalised by `stats[choice[i]]`: one pass per condition present."""
        present = sorted(set(choice.tolist()))
        if len(present) == 1:
            with self.lent(stats[present[0]]):
                return forward(x)
        out = None
        for k in present:
            rows = (choice == k).nonzero().view(-1).to(x.device)
            with self.lent(stats[k]):
                y = forward(x.index_select(0, rows))
            if out is None:
                out = y.new_empty((len(x),) + tuple(y.shape[1:]))
            out.index_copy_(0, rows, y)
        return out


def floating_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype a model computes in (its first floating parameter's, else buffer's): what
    lent statistics are cast to. An integer buffer (a counter, an index) says nothing about it."""
    return next((t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()),
                torch.get_default_dtype())


def stats_on(stats: dict, device: torch.device, dtype=None) -> dict:
    return {n: (m.to(device, dtype or m.dtype), v.to(device, dtype or v.dtype)) for n, (m, v) in stats.items()}
