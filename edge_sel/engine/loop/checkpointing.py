"""Full-state checkpoints of a training run, and the rollback to the last one.

A checkpoint holds what a resumed run needs to end with the records of a run that was never
interrupted: weights, optimizer, RNGs, the half-done epoch, strategy and updater state, records,
the compute ledger, the run budget's position (joules and seconds so far) and the keep-best choice.
A non-finite loss rolls the run back to the last checkpoint with the learning rate halved; the steps
thrown away stay counted in the next record.
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from edge_sel.engine.loop.budget import STOPS
from edge_sel.engine.loop.ledger import ROLLED_BACK_ZERO
from edge_sel.engine.loop.progress import EpochProgress
from edge_sel.engine.loop.state import load_state, save_state
from edge_sel.engine.loop.totals import StepTotals
from edge_sel.errors import TrainingDiverged

MAX_NONFINITE_IN_A_ROW = 3
STATE_FORMAT = "edge-sel-train-state/1"


class Rollback(Exception):
    """Raised inside an epoch when a loss is not finite; the run restores its last checkpoint."""


def capture(trainer) -> dict:
    """The trainer's full state, on the CPU."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "data": trainer.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    backend_state = getattr(trainer.backend, "state_dict", None)
    progress = trainer.progress
    return {
        "format": STATE_FORMAT, "step": trainer.step,
        "next_epoch": trainer.next_epoch, "progress": None if progress is None else progress.to_state(),
        # The model's own tensors on a CPU (a GPU's come over): save_state streams them to the file at
        # once, so a copy would only add the model's size to a mid-epoch save inside a budget.
        "model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(), "backend": backend_state() if backend_state else None,
        "strategy": trainer.strategy.state_dict(), "updater": trainer.updater.state_dict(),
        "rng": rng, "records": list(trainer.records), "scoring": dict(trainer.ledger.scoring),
        "eval_j": trainer.budget.eval_j, "lr_mult": trainer.lr_mult, "nonfinite_events": trainer.nonfinite_events,
        "energy_total_j": trainer.budget.total_j(trainer.meter),
        "eval_s": trainer.budget.eval_s, "wall_total_s": trainer.budget.total_s(),
        "step_j": trainer.budget.step_j, "step_s": trainer.budget.step_s,     # a resumed epoch's first check
        "baseline": trainer.baseline, "choice": trainer.choice.state_dict(),
        "rolled_back": dict(trainer.ledger.rolled_back),
        # What strategies told updaters through the context (e.g. the curriculum stage that sets
        # the guilt threshold): a resumed epoch does not plan again, so it must come back too.
        "context": dict(trainer.ctx.state),
        "bn_adapt": {"done": trainer.bn_adapt_done, "pending": trainer.bn_adapt_pending},
        # An energy- or time-budget stop ends the run: a resume after it writes the outputs and trains no more.
        "stop_reason": trainer.stop_reason if trainer.stop_reason in STOPS else None,
        "budget_stop": trainer.budget.stopped,
    }


def restore(trainer, state: dict) -> None:
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("backend") is not None and hasattr(trainer.backend, "load_state_dict"):
        trainer.backend.load_state_dict(state["backend"])
    trainer.strategy.load_state_dict(state["strategy"])
    trainer.updater.load_state_dict(state["updater"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(tuple(x.numpy() if torch.is_tensor(x) else x for x in rng["numpy"]))
    random.setstate(rng["python"])
    trainer.generator.set_state(rng["data"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    trainer.step = state["step"]
    trainer.next_epoch = state["next_epoch"]
    trainer.progress = None if state["progress"] is None else \
        EpochProgress.from_state(state["progress"], trainer.config.temperature, trainer.device)
    trainer.records = list(state["records"])
    budget = trainer.budget
    budget.eval_j = state["eval_j"]
    budget.offset_j = state["energy_total_j"] - trainer.meter.total_j
    budget.eval_s, budget.step_j, budget.step_s = (state.get(k, 0.0) for k in ("eval_s", "step_j", "step_s"))
    budget.offset_s = state.get("wall_total_s", 0.0)     # the earlier part's seconds (a rollback keeps its own)
    budget.stopped = state.get("budget_stop")
    trainer.lr_mult = state["lr_mult"]
    trainer.nonfinite_events = state["nonfinite_events"]
    trainer.baseline = state.get("baseline")
    adapt = state.get("bn_adapt") or {}
    trainer.bn_adapt_done, trainer.bn_adapt_pending = bool(adapt.get("done")), adapt.get("pending")
    trainer.ctx.state.clear()
    trainer.ctx.state.update(state.get("context", {}))
    trainer.ledger.scoring = dict(state["scoring"])
    trainer.ledger.rolled_back = dict(state.get("rolled_back", ROLLED_BACK_ZERO))
    if trainer.ranks is not None and not trainer.ranks.world.is_main:
        # Rank 0's state holds the world's uncharged compute; the epoch's sum over ranks adds it once.
        trainer.ledger.scoring = {"samples": 0, "flops": 0}
        trainer.ledger.rolled_back = dict(ROLLED_BACK_ZERO)
    trainer.ledger.checkpointed(trainer.meter.total_j)
    trainer.totals = StepTotals(trainer.device)      # unread sums belonged to the steps thrown away
    trainer.choice.load_state_dict(state.get("choice"))
    trainer.stop_reason = state.get("stop_reason")


class Checkpoints:
    """Writes full states into `state_dir` (None: none are written, so no rollback either) and
    rolls a run back to the last one. Under torchrun (`ranks`) rank 0 alone writes, and a rollback
    takes every rank back to rank 0's checkpoint."""

    def __init__(self, state_dir: Path | None, ranks=None):
        self.state_dir = state_dir
        self.ranks = ranks
        self.nonfinite_in_a_row = 0

    def _last_state(self) -> dict:
        if self.ranks is None:
            return load_state(self.state_dir)
        return self.ranks.rank_zero_state(lambda: load_state(self.state_dir))

    def save(self, trainer) -> None:
        if self.state_dir is not None:
            save_state(self.state_dir, capture(trainer))
        if self.state_dir is not None or self.ranks is not None:     # rank 0's checkpoint is every rank's
            self.nonfinite_in_a_row = 0    # progress was made since the last rollback
            trainer.ledger.checkpointed(trainer.meter.total_j)

    def save_mid_epoch(self, trainer, progress: EpochProgress, t0: float, j0: float) -> None:
        trainer.read_totals(progress, f"batch {progress.next_batch} of epoch {progress.epoch}")   # never save a NaN
        # Time and energy so far move into the progress, so a resume continues the sums.
        now = time.perf_counter()
        progress.wall_s += now - t0
        progress.energy_j += trainer.meter.total_j - j0
        self.save(trainer)
        progress.wall_s -= now - t0        # the epoch's own timer keeps running; undo the move
        progress.energy_j -= trainer.meter.total_j - j0

    def roll_back(self, trainer, reason: str) -> None:
        trainer.nonfinite_events += 1
        self.nonfinite_in_a_row += 1
        if (self.state_dir is None and self.ranks is None) or self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            where = self.state_dir or "rank 0's run directory"
            raise TrainingDiverged(f"{reason}; {self.nonfinite_in_a_row} non-finite losses in a row after "
                                   f"rolling back and halving the learning rate: stopping. The last good "
                                   f"checkpoint is in {where}")
        events, mult = trainer.nonfinite_events, trainer.lr_mult
        try:
            trainer.meter.end("train")
        except ValueError:
            pass
        ledger = trainer.ledger
        lost = ledger.since_checkpoint(trainer.meter.total_j)
        if self.ranks is not None:
            lost = self.ranks.world_rolled_back(lost)
        scoring_flops, rolled = ledger.scoring["flops"], dict(ledger.rolled_back)
        offset_s = trainer.budget.offset_s
        restore(trainer, self._last_state())
        trainer.budget.offset_s = offset_s      # wall seconds pass whatever is thrown away
        lost["flops"] += max(0, scoring_flops - ledger.scoring["flops"])   # scoring passes since the checkpoint
        ledger.rolled_back = {k: rolled[k] + lost[k] for k in rolled}
        trainer.budget.offset_j += lost["j"]      # the budget counts joules of steps thrown away
        trainer.nonfinite_events = events
        trainer.lr_mult = mult * 0.5       # halvings compound across repeated rollbacks
        # The halved rate, the event and the thrown-away cost are part of the state from now on:
        # a crash before the next checkpoint must not resume at the rate that diverged.
        if self.state_dir is not None:
            save_state(self.state_dir, capture(trainer))
        warnings.warn(f"{reason}: rolled back to the last checkpoint, learning rate x{trainer.lr_mult:g}")
