"""Forward passes a strategy asks for outside the training steps, each counted in the ledger (so
in the epoch's record): selection is never free."""

from __future__ import annotations

import contextlib

import torch

from edge_sel.backends.torch_backend import freeze_batchnorm_stats
from edge_sel.core.flops import FlopCounter
from edge_sel.data import IndexedDataset
from edge_sel.engine.evaluation.evaluate import evaluation_flops, predict_dataset
from edge_sel.engine.loop.ledger import ComputeLedger


class ScoringPasses:
    def __init__(self, model: torch.nn.Module, train_ds: IndexedDataset, mean, std, device,
                 batch_size: int, memory_format, flops: FlopCounter, ledger: ComputeLedger,
                 bn_mode: str | None = None, autocast=contextlib.nullcontext):
        self.model, self.train_ds, self.mean, self.std, self.device = model, train_ds, mean, std, device
        self.batch_size, self.memory_format = batch_size, memory_format
        self.flops, self.ledger = flops, ledger
        self.bn_mode = bn_mode or "train"
        self.autocast = autocast        # the forward-only passes' precision (engine.precision)

    def losses(self, positions: torch.Tensor | None = None, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Per-sample losses of training samples under `model` (default: the live model)."""
        model = model or self.model
        model.to(self.device).eval()
        ds = self.train_ds if positions is None else self.train_ds.subset(positions)
        fmt = self.memory_format if model is self.model else torch.contiguous_format
        def predict(x):
            with self.autocast():
                return model(x).float()
        logits = predict_dataset(predict, ds, self.mean, self.std, self.batch_size, fmt)
        counter = self.flops if model is self.model else FlopCounter(model, ds.input_shape)
        self.ledger.add_scoring(len(ds), evaluation_flops(counter, len(ds), self.batch_size))
        # A normal tensor again (inference tensors refuse in-place updates outside inference mode).
        return torch.nn.functional.cross_entropy(logits.clone(), ds.labels, reduction="none")

    def batch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one (augmented) batch normalised as the training step will (BatchNorm on the
        batch's statistics, or on the running ones under --bn-mode eval), without a graph: what
        two-pass gating spends to decide which rows of a batch to train. The pass leaves the
        running statistics as they were: rows it drops are never trained on."""
        self.model.train()
        if self.bn_mode == "eval":
            freeze_batchnorm_stats(self.model)
        with batchnorm_stats_kept(self.model), torch.inference_mode(), self.autocast():
            logits = self.model(x).float()
        self.ledger.add_scoring(len(x), self.flops.eval_batch(len(x)))
        return logits.clone()


@contextlib.contextmanager
def batchnorm_stats_kept(model: torch.nn.Module):
    """BatchNorm running statistics (and batch counts) as they were before the block."""
    buffers = [b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
