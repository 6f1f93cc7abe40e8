"""A run's directory: its config.json, and whether a resume finds it finished or restarted by
torchrun. Where it may be written, and when an earlier one is replaced: core/outputs.py."""

from __future__ import annotations

import json
from pathlib import Path

from edge_sel.core.checkpoint import atomic_write_bytes
from edge_sel.engine.loop.budget import STOPS
from edge_sel.engine.loop.state import StateWriteError
from edge_sel.engine.runs.ddp import is_restart_of
from edge_sel.errors import InputError, read_json


def write_config(out: Path, config: dict) -> None:
    try:
        atomic_write_bytes(out / "config.json", json.dumps(config, indent=2, default=str).encode())
    except OSError as e:
        raise StateWriteError(f"{out / 'config.json'}: cannot write ({e.strerror or e})") from None


def restarted_here(out: Path) -> bool:
    """True when torchrun restarted the job whose run --out holds (same torchrun run id): its
    workers resume from the last checkpoint. A plain rerun still needs --overwrite or --resume."""
    try:
        config = read_json(out / "config.json")
    except (OSError, ValueError):
        return False
    return config.get("phase") == "pretrain" and is_restart_of(config)


def refuse_finished(run_dir: Path, epochs: int) -> None:
    """A run is finished once its summary.json says so (all epochs, its strategy's end, or its
    energy or time budget). A run killed after its last state write but before its summary is not:
    its resume writes the outputs without training again."""
    try:
        summary = read_json(run_dir / "summary.json")
    except (OSError, ValueError):
        return
    if not isinstance(summary, dict):
        raise InputError(f"--resume {run_dir}: summary.json is not a run's summary (JSON, but not a mapping)")
    reason = summary.get("stop_reason")
    if reason == "interrupted":
        return
    if reason in STOPS:
        raise InputError(f"--resume {run_dir}: the run stopped on its {reason.replace('_', ' ')} and is finished; "
                         f"start a new run to train more")
    raise InputError(f"--resume {run_dir}: the run already finished ({summary.get('epochs_run', epochs)} of "
                     f"{epochs} epochs)")
