"""The Python half of benchmarks/gpu_transfer.sh: the warmups' figures gathered into one file (`warmups`),
and the 128 px warmup the benches start from (`pick`): the finished one with the best validation
accuracy in its last epoch.

    python benchmarks/gpu_transfer.py warmups WORK OUT/warmups.json
    python benchmarks/gpu_transfer.py pick WORK PREFIX
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpu_reference import _records     # benchmarks/ is on the path when this runs as a script

EPOCH_KEYS = ("epoch", "stage", "train_acc", "val_acc", "test_acc", "wall_s", "samples_per_s", "flops_train",
              "energy_j", "energy_method", "energy_shared_with", "memory_counted_mb", "memory_measured_mb", "memory_measure_method")


def warmup(run_dir: Path) -> dict:
    """One warmup: its command's options, each epoch's figures, and the summary's totals where it finished."""
    facts = {"run": run_dir.name, "finished": (run_dir / "model.json").exists()}
    try:
        facts["config"] = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        pass
    facts["epochs"] = [{k: r.get(k) for k in EPOCH_KEYS} for r in _records(run_dir)]
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    for key in ("total_wall_s", "totals", "totals_note", "final", "best_val", "memory", "precision", "layout",
                "energy_meter", "source_memory", "device"):
        if key in summary:
            facts[key] = summary[key]
    return facts


def warmups(work: Path, dest: Path) -> int:
    found = [warmup(d) for d in sorted(work.glob("warm*")) if d.is_dir()]
    dest.write_text(json.dumps(found, indent=1, default=str))
    for w in found:
        last = w["epochs"][-1] if w["epochs"] else {}
        print(f"{w['run']}: {'finished' if w['finished'] else 'NOT finished'}, {len(w['epochs'])} epochs recorded, "
              f"last val {last.get('val_acc')}, test {last.get('test_acc')}, wall {w.get('total_wall_s')}"
              + (f", joules shared with {last['energy_shared_with']} other process(es) on the card: not its own"
                 if last.get("energy_shared_with") else ""))
    return 0


def pick(work: Path, prefix: str) -> int:
    """Print the finished warmup named PREFIX* with the best last validation accuracy (exit 1: none)."""
    best = None
    for d in sorted(work.glob(prefix + "*")):
        recs = _records(d)
        if (d / "model.json").exists() and recs and recs[-1].get("val_acc") is not None:
            if best is None or recs[-1]["val_acc"] > best[0]:
                best = (recs[-1]["val_acc"], d)
    if best is None:
        print(f"no finished warmup {prefix}* in {work}", file=sys.stderr)
        return 1
    print(best[1])
    return 0


def main() -> int:
    command, *args = sys.argv[1:] or ["--help"]
    if command == "warmups":
        return warmups(Path(args[0]), Path(args[1]))
    if command == "pick":
        return pick(Path(args[0]), args[1])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
