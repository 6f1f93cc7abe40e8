"""The BatchNorm bank inside a run's evaluations (--bn-conditions): re-estimated for the weights
being judged, each image normalised with its nearest condition's statistics, the cost charged to
a record's evaluation FLOPs. Training never sees the bank (engine/evaluation/bn_bank.py)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from edge_sel.engine.machine import peak_memory


@contextmanager
def bank_selecting(trainer):
    """An evaluation's setting under the bank: re-estimated for the model's current weights, each
    batch normalised with its nearest condition's statistics. Yields the re-estimation's cost
    (None without a bank)."""
    if trainer.bank is None:
        yield None
        return
    refreshed = refresh_bank(trainer)
    with trainer.bank.selecting(trainer.model):
        yield refreshed


def refresh_bank(trainer) -> dict:
    """The bank re-estimated for the current weights, in the forward-only passes' precision
    (as the run's own BatchNorm re-estimation; the statistics themselves are kept in fp32)."""
    with trainer.eval_autocast():
        return trainer.bank.refresh(trainer.model, trainer.flops, trainer.eval_batch_size, trainer.memory_format)


def predict_selected(trainer, x: torch.Tensor) -> torch.Tensor:
    """The torch model itself, whose forward chooses each image's condition (a compiled graph
    or an ORT session would not)."""
    with trainer.eval_autocast():
        return trainer.model.eval()(x).float()


def charge_bank(trainer, record: dict, refreshed: dict) -> None:
    """The bank's re-estimation passes and choosing a condition for every evaluated image, into
    a record's evaluation FLOPs."""
    flops = refreshed["flops"] + trainer.bank.take_selected() * trainer.bank.choice_flops(trainer.train_ds.input_shape)
    record["flops_bn_bank"] = (record.get("flops_bn_bank") or 0) + flops
    record["bn_bank_samples"] = (record.get("bn_bank_samples") or 0) + refreshed["samples"]
    record["flops_eval"] = (record.get("flops_eval") or 0) + flops


@contextmanager
def holding(model: torch.nn.Module, state: dict | None):
    """The model with `state` (every key or some) loaded for the block (unchanged when None), then as
    it was. Tensors of the same shape and type are exchanged in place, one spare tensor at a time, so
    holding the kept state costs no second copy of the model."""
    if state is None:
        yield
        return
    live = model.state_dict()
    if not all(k in live and live[k].shape == v.shape and live[k].dtype == v.dtype for k, v in state.items()):
        current = {k: v.detach().clone() for k, v in live.items()}
        model.load_state_dict(state, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(current)
        return
    _exchange(live, state)
    try:
        yield
    finally:
        _exchange(live, state)


def _exchange(live: dict, state: dict) -> None:
    with torch.no_grad():
        for key, held in state.items():
            spare = live[key].clone()
            live[key].copy_(held)
            held.copy_(spare)


@contextmanager
def metered(trainer):
    """An evaluation pass's window on the run's meter: yields a dict that holds, once the block
    ends, its wall seconds (`wall`), the meter's reading (`energy`) and its measured peak memory
    in MiB (`memory_mb`, engine/machine/peak_memory.py)."""
    took = {}
    trainer.meter.begin("eval")
    peak_memory.between_phases()
    window = trainer.run_memory.meter.begin(trainer.run_memory.base)
    t0 = trainer.budget.clock()     # the run's clock, which --time-budget reads
    with peak_memory.evaluating(trainer.config.memory_budget_mb is not None):
        yield took
    took["wall"] = trainer.budget.clock() - t0
    took["memory_mb"] = trainer.run_memory.meter.end(window)
    took["energy"] = trainer.meter.end("eval")


def add_evaluation_time(record: dict, wall: float, joules: float | None) -> None:
    record["eval_wall_s"] = (record.get("eval_wall_s") or 0) + wall
    if joules is not None:
        record["eval_energy_j"] = (record.get("eval_energy_j") or 0) + joules
