"""The loop's counted memory: a counter of the run's steps (core/memory.py) with the run's optimizer,
and the shape its steps take (micro-batches, recomputed blocks, BatchNorm statistics)."""

from __future__ import annotations

from functools import partial

from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.config import TrainConfig
from edge_sel.core.memory import MemoryCounter, StepShape


def memory_counter(cfg: TrainConfig, model, input_shape) -> tuple[MemoryCounter, StepShape]:
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    shape = StepShape(cfg.batch_size, bn_statistics="frozen" if cfg.bn_mode == "eval" else "train")
    return MemoryCounter(model, input_shape, optimizer), shape
