"""Per-epoch records: appended to metrics.jsonl (fsynced), mirrored to metrics.csv."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import stat
from pathlib import Path

from edge_sel.core.temp_file import replacing
from edge_sel.errors import parse_json, writing

# The record fields, in the order of the record table in docs/records.md; per-class fields (acc_/E_/C_<class>) follow them.
RECORD_FIELDS = [
    "epoch", "phase", "stage", "strategy", "samples_available", "forward_samples",
    "backward_samples", "activation", "train_loss", "train_acc", "val_acc", "test_acc",
    "grad_sparsity", "params_updated_frac", "flops_forward", "flops_backward", "wall_s",
    "peak_rss_mb", "energy_j", "energy_source", "energy_method", "energy_coverage",
    "avg_power_w", "max_temp_c", "throttled_s",
]
# Fields that measure the run rather than determine it: excluded when comparing reruns.
VOLATILE_FIELDS = {"wall_s", "eval_wall_s", "peak_rss_mb", "energy_j", "energy_net_j", "avg_power_w",
                   "peak_power_w", "max_temp_c", "throttled_s", "energy_coverage", "energy_by_component",
                   "idle_power_w", "eval_energy_j", "samples_per_s", "energy_window_s", "energy_samples",
                   "throttle_reasons", "joules_per_sample", "kept_test_energy_j", "memory_measured_mb",
                   "memory_eval_measured_mb", "memory_process_peak_mb", "memory_allocator", "memory_plan_wall_s",
                   "memory_plan_energy_j", "memory_plan_counts", "memory_plan_counts_read", "memory_plan_child_s",
                   "memory_plan_child_cpu_s", "memory_plan_pool_s", "memory_plan_pool_cpu_s", "memory_plan_child_counts",
                   "memory_plan_children", "choice_wall_s", "choice_energy_j",
                   "energy_shared_with", "energy_gpu_processes"}


def planning_of(record: dict) -> tuple[float, float | None, int]:
    """What the record's epoch spent choosing before its first step (a memory plan, a default choice:
    their seconds, joules and counted trial FLOPs), which its wall_s, energy_j and flops_train hold."""
    seconds = (record.get("memory_plan_wall_s") or 0.0) + (record.get("choice_wall_s") or 0.0)
    parts = [record.get(k) for k in ("memory_plan_energy_j", "choice_energy_j") if record.get(k) is not None]
    return seconds, (sum(parts) if parts else None), record.get("memory_plan_trial_flops") or 0


def open_to_append(path, flags: int = os.O_RDWR | os.O_APPEND | os.O_CREAT) -> int:
    """A descriptor appending to (and reading) the regular file `path`, created when missing, never
    through a link: a log a run or a deployed place keeps (metrics.jsonl, promote.jsonl, the deployed
    history) that was replaced by a link to another file is refused (OSError), not written through.
    Also an opener for open(path, "a", opener=open_to_append)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a link; edge-sel appends through no link", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_records(path: Path) -> list[dict]:
    """All complete records; a truncated last line (power lost mid-write) is skipped."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(parse_json(line))
        except json.JSONDecodeError:
            continue
    return out


class RecordWriter:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.records: list[dict] = []

    def reset(self, records: list[dict]) -> None:
        """Make the files hold exactly `records` (a resume rewrites what its checkpoint knows)."""
        self.records = [{k: _clean(v) for k, v in r.items()} for r in records]
        with writing(self.jsonl), replacing(self.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)
        self.write_csv()

    def append(self, record: dict) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        self.records.append(record)
        with writing(self.jsonl), open(self.jsonl, "a", opener=open_to_append) as f:
            size = f.tell()
            try:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                # A full disk mid-line: cut the part-line off, so a later append starts a line of its own.
                self.records.pop()
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise
        self.write_csv()

    def write_csv(self) -> None:
        keys = list(RECORD_FIELDS)
        for r in self.records:
            keys += [k for k in r if k not in keys]
        with writing(self.csv), replacing(self.csv, "w", sync=False, newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for r in self.records:
                w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
