"""Replace a device's deployed model with a fine-tune's output, only when the fine-tune finished and
beat the model it started from on local validation data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edge_sel.errors import InputError

MODEL_FILES = ("model.safetensors", "model.json")


def promote(run_dir: Path, deployed: Path) -> tuple[bool, str]:
    """Returns (replaced, why). The deployed directory is swapped in one rename, so a reader sees
    the old model or the new one, never half of each."""
    run_dir, deployed = Path(run_dir), Path(deployed)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"RUN {run_dir}: no readable summary.json ({e.__class__.__name__})") from None
    missing = [f for f in MODEL_FILES if not (run_dir / f).is_file()]
    if missing:
        raise InputError(f"RUN {run_dir}: missing {', '.join(missing)}")
    kept = summary.get("kept") or {}
    if summary.get("stop_reason") == "interrupted":     # an energy-budget stop ends a run normally
        return False, "the run was interrupted before its last epoch; the deployed model stays"
    if kept.get("kept") == "warmup":
        return False, f"{kept.get('reason', 'fine-tuning did not help')}; the deployed model stays"
    staging = deployed.with_name(f".{deployed.name}.new")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(run_dir / name, staging / name)
        with open(staging / name, "rb") as f:
            os.fsync(f.fileno())
    old = deployed.with_name(f".{deployed.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if deployed.exists():
        os.replace(deployed, old)
    os.replace(staging, deployed)
    shutil.rmtree(old, ignore_errors=True)
    return True, f"deployed {run_dir} ({kept.get('reason', 'last epoch')})"
