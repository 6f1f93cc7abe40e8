"""One fine-tune of a bench (bench memory's and bench transfer's) and how it ended: ran to its end,
stopped early (bench/stopping.py), or refused its budget.

A budgeted run may refuse its --memory-budget before its first step where the bench's count said it
fits: the run also counts what the process grew by before that step (torch's kernels loaded on first
use, planning; engine/loop/first_use.py), which a count cannot. Such a run is a row that does not fit,
with the run's one line and the smallest budget it names, not a failure of the bench; any other error
of a run still ends the bench.
"""

from __future__ import annotations

import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from edge_sel.bench.stopping import BenchStop
from edge_sel.config import TrainConfig
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune
from edge_sel.errors import InputError, RunKilled

# A run's refusal of its --memory-budget (memory_plan.py, joule_choice.py, step_memory.py), and the smallest
# budget it names.
REFUSAL = re.compile(r"--memory-budget [0-9.e+-]+: ")
NEEDS = re.compile(r"the smallest[^;]*? is (?:about )?([0-9.]+) MiB")
RAN, STOPPED, REFUSED = "ran", "stopped", "refused"


class RunRefused(Exception):
    """A budgeted run refused its budget before its first step (the bench's count said it fits; the run
    also counts what the process grew by before that step): a row that does not fit, not a failure."""

    def __init__(self, reason: str):
        super().__init__(reason)
        needs = NEEDS.search(reason)
        self.reason, self.needs_mb = reason, float(needs.group(1)) if needs else None

    def row(self, seed: int, run_dir: Path, budget_mb: float) -> dict:
        return {"seed": seed, "budget_mb": budget_mb, "needs_mb": self.needs_mb, "reason": self.reason,
                "run_dir": str(run_dir)}


def _finetune_with_threads(checkpoint: Path, data: DataOptions, cfg: TrainConfig, run_dir: Path,
                           threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    finetune(checkpoint, data, cfg, run_dir, overwrite=True, quiet=True)


def finetune_alone(checkpoint: Path, data: DataOptions, cfg: TrainConfig, run_dir: Path) -> None:
    """Fine-tune in a spawned process (nothing inherited but the arguments and the environment) on
    this process's torch threads, as the command line runs it; an error in it is raised here, and its
    death (killed: out of memory, a signal) as RunKilled, not a pool's traceback."""
    import torch
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_finetune_with_threads, checkpoint, data, cfg, run_dir, torch.get_num_threads()).result()
    except BrokenProcessPool:
        raise RunKilled(f"{run_dir}: the bench's fine-tune was killed before it finished (out of memory, or a "
                        f"signal); its run directory holds what it wrote") from None


def bench_finetune(checkpoint: Path, data: DataOptions, cfg: TrainConfig, run_dir: Path, own_process: bool) -> None:
    """One fine-tune, in a process of its own or in this one; RunRefused where a budgeted run refused
    its budget."""
    try:
        if own_process:
            finetune_alone(checkpoint, data, cfg, run_dir)
        else:
            finetune(checkpoint, data, cfg, run_dir, overwrite=True, quiet=True)
    except InputError as e:
        if cfg.memory_budget_mb is None or not REFUSAL.match(str(e)):
            raise
        raise RunRefused(str(e)) from None


def run_one(stop: BenchStop, checkpoint: Path, data: DataOptions, cfg: TrainConfig, run_dir: Path, own_process: bool,
            name: str, seed: int, refused: dict, log=print) -> str:
    """Runs one fine-tune unless the bench was told to stop: RAN where it ran to its end, STOPPED where it
    did not (then named in `stop.runs`), REFUSED where it refused its budget (then added to `refused`
    under `name`)."""
    try:
        if stop.ran(lambda: bench_finetune(checkpoint, data, cfg, run_dir, own_process), run_dir, name, seed,
                    cfg.epochs):
            return RAN
        return STOPPED
    except RunRefused as e:
        refused.setdefault(name, []).append(e.row(seed, run_dir, cfg.memory_budget_mb))
        log(f"  seed {seed} {name:20s} refused its budget: {e.reason}")
        return REFUSED


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def refused_lines(refused: dict | None) -> list[str]:
    """Each run that refused its budget, in the run's own words, for a bench's table.md (none: no lines)."""
    runs = [(name, r) for name, rs in (refused or {}).items() for r in rs]
    if not runs:
        return []
    return ["", "Does not fit: the run refused its budget (before its first step; in no mean or paired difference):", "",
            *[f"- {name} seed {r['seed']} under {_num(r['budget_mb'])} MiB"
              + (f", needs {_num(r['needs_mb'])} MiB" if r.get("needs_mb") is not None else "") + f": {r['reason']}"
              for name, r in runs]]


def refused_fit(fit: dict, ran: list[dict], refused: list[dict]) -> dict:
    """A row's fit as its runs had it: where every run of it refused its budget, it does not fit and needs
    the largest smallest budget they named (`fit` as the bench's count had it otherwise)."""
    if not refused or ran:
        return fit
    needs = [r["needs_mb"] for r in refused if r.get("needs_mb") is not None]
    return {**fit, "fits": False, "needs_mb": max(needs, default=None)}
