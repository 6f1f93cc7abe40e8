"""Batches of one row. BatchNorm layers that train their statistics cannot train on one sample (at a
1 x 1 map it raises, elsewhere one image's statistics replace the batch's), so such a row waits for
the next step; a model that trains no BatchNorm statistics trains it as its own step. `--batch-size 1`
with BatchNorm statistics training is refused before anything runs: every batch would be a row
waiting for the next, and the epoch would train nothing."""

from __future__ import annotations

from torch import nn

from edge_sel.errors import InputError


def trains_batchnorm_statistics(model: nn.Module, bn_mode: str | None) -> bool:
    return bn_mode != "eval" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                                     for m in model.modules())


def refuse_batches_of_one(batch_size: int, model: nn.Module, bn_mode: str | None) -> None:
    if batch_size == 1 and trains_batchnorm_statistics(model, bn_mode):
        raise InputError("--batch-size 1: this model's BatchNorm layers train their statistics on each batch and "
                         "cannot on one sample; pass --bn-mode eval (the running statistics, frozen) or a batch of 2 or more")


def rows_to_train(progress, batch, filter_batch, single_rows_train: bool):
    """The rows this step trains (None: none yet). A planned row of one waits (joined to any row already
    waiting) unless single rows train; online gates may drop rows of a planned batch before its step."""
    if len(batch) == 1 and not single_rows_train:   # only a plan of one sample gives a one-row batch (batch_starts)
        progress.carry = batch if progress.carry is None else progress.carry.join(batch)
        return None
    batch = filter_batch(batch)
    if batch is None or len(batch) == 0:
        return None
    if progress.carry is not None:
        batch, progress.carry = progress.carry.join(batch), None
    if len(batch) == 1 and not single_rows_train:   # it joins the next step
        progress.carry = batch
        return None
    return batch
