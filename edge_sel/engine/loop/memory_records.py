"""A run's memory in its records: the counted peak of the steps it took (core/memory.py, for the
trainable set each step had and the run's step shape) and of its forward-only passes, beside the
peak measured by an independent method (engine/machine/peak_memory.py); docs/memory.md says what
each includes."""

from __future__ import annotations

from dataclasses import replace

import torch

from edge_sel.core.memory import MiB, MemoryCount, nbytes
from edge_sel.engine.machine.memory_plan import MemoryPlan
from edge_sel.engine.machine.peak_memory import (PeakMeter, allocator_record, between_phases, fault_in,
                                                    release_free_heap)

# MemoryCount's parts, as record fields.
PARTS = ("weights", "optimizer", "batch", "kept", "activations", "gradients", "transient", "workspace", "saved")


def mib(n: int) -> float:
    return round(n / MiB, 3)


def count_fields(count: MemoryCount | None, prefix: str = "memory") -> dict:
    if count is None:
        return {f"{prefix}_counted_mb": None}
    return {f"{prefix}_counted_mb": mib(count.peak), **{f"{prefix}_{k}_mb": mib(getattr(count, k)) for k in PARTS}}


class RunMemory:
    """Counted and measured memory of a trainer's epochs and evaluations. Each step notes its
    trainable set and rows in the epoch's progress (saved with it, so a resumed epoch's record is
    the same); the epoch's record counts each distinct one once (the counter caches) and keeps the
    largest."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.meter = PeakMeter(trainer.device)
        sets = [trainer.train_ds, trainer.val_ds, trainer.val_eval_ds, trainer.test_ds, trainer.clean_test_ds]
        data = [t for ds in sets if ds is not None for t in (ds.images, ds.labels, ds.index)]
        if self.meter.method.startswith("rss"):
            # Free pages the C allocator kept from earlier work in this process (another run, a
            # probe) go back first: training reusing them would measure no growth over the base.
            release_free_heap()
            fault_in(data)      # the data is part of the level, however much of it a window reads
        # Just before training (the model, its data and the probes' leftovers in place): every
        # window's peak is measured over this level.
        self.base = self.meter.level()
        self.window = None
        self.snapshot = None
        self.data_bytes = nbytes(data)

    def begin_epoch(self) -> None:
        """The epoch's measured window opens (once: a window left open by a rollback is kept)."""
        if self.window is None:
            between_phases()
            self.window = self.meter.begin(self.base)

    def observe(self, progress, rows: int) -> None:
        """A step about to run: its trainable set (as the updater left it) and its rows."""
        signature = "".join("1" if p.requires_grad else "0" for p in self.trainer.model.parameters())
        progress.memory_steps[signature] = max(progress.memory_steps.get(signature, 0), rows)

    def largest_step(self, steps: dict[str, int]) -> tuple[MemoryCount | None, int]:
        """The counted step of the largest peak among `steps` (signature -> rows), and its rows."""
        counter, shape = self.trainer.memory_counter, self.trainer.step_shape
        names = [n for n, _ in self.trainer.model.named_parameters()]
        best, best_rows = None, 0
        for signature, rows in steps.items():
            trainable = {n for n, bit in zip(names, signature) if bit == "1"}
            count = counter.count(replace(shape, batch_size=rows), trainable)
            if best is None or count.peak > best.peak:
                best, best_rows = count, rows
        return best, best_rows

    def epoch_fields(self, progress, record: dict) -> dict:
        """The epoch's measured peak (its window closes: the evaluation is measured on its own),
        then its counted steps, the re-estimation pass it ran, and the datasets on the device."""
        measured, self.window = self.meter.end(self.window), None
        self.snapshot = progress.before         # alive through the epoch's evaluation
        count, rows = self.largest_step(progress.memory_steps)
        out = {**count_fields(count), "memory_step_samples": rows or None,
               "memory_step_sets": len(progress.memory_steps),
               "memory_measured_mb": measured, "memory_measure_method": self.meter.method,
               "memory_process_peak_mb": self.meter.process_peak(),
               "memory_data_mb": mib(self.data_bytes), **self.allocator()}
        if self.trainer.config.memory_plan:      # what BatchNorm layers normalised with, as the plan chose
            out["memory_bn_statistics"] = MemoryPlan.from_json(self.trainer.config.memory_plan).statistics()
        out.update(self.trainer.__dict__.pop("memory_plan_cost", None) or {})     # the first epoch's: its planning
        out.update(self.trainer.__dict__.pop("choice_cost", None) or {})          # and a default choice's
        if self.trainer.config.backend != "torch":
            out["memory_counted_for"] = "the same step in torch (ONNX Runtime's own graph is not counted)"
        if record.get("bn_adapt_samples"):      # BatchNorm re-estimation: train mode, no gradients, its planned batch
            batch = min(getattr(self.trainer, "bn_adapt_batch", 256), record["bn_adapt_samples"])
            out["memory_bn_adapt_counted_mb"] = mib(self.trainer.memory_counter.count_forward(batch, True).peak)
        return out

    def evaluation_fields(self, measured: float | None, evaluated: dict) -> dict:
        """An evaluation (`evaluated`: its fields): counted at the evaluation batch size, or the
        largest set's size where that is smaller, in eval mode; and the peak its window measured."""
        largest = max(evaluated.get(f"{k}_samples_evaluated", 0) or 0 for k in ("val", "test", "anchor"))
        if not largest:
            return {"memory_eval_counted_mb": None, "memory_eval_measured_mb": None}
        batch = min(self.trainer.eval_batch_size, largest)
        count = self.trainer.memory_counter.count_forward(batch)
        # What training keeps alive beside this pass (its bytes counted from the live tensors): the
        # optimizer's state, the last step's gradients, the epoch's parameter copy, --keep best's copy.
        model, optimizer = self.trainer.model, self.trainer.optimizer
        beside = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        beside += [p.grad for p in model.parameters() if p.grad is not None]
        beside += [b for b in self.snapshot or [] if b is not None]     # None: a tensor the epoch did not keep
        beside += list((self.trainer.choice.weights or {}).values())
        self.snapshot = None
        return {"memory_eval_counted_mb": mib(count.peak), "memory_eval_beside_mb": mib(nbytes(beside)),
                "memory_eval_measured_mb": measured, "memory_process_peak_mb": self.meter.process_peak(),
                **self.allocator()}

    def allocator(self) -> dict:
        """The allocator a CPU run's pages come from (its measured peaks depend on it)."""
        return {"memory_allocator": allocator_record()} if self.trainer.device.type == "cpu" else {}
