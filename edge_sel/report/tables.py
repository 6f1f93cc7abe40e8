"""The per-run table of a report, as rows of (column -> value), Markdown and CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from edge_sel.report.runs import RunData, totals

# (key, heading, format) ; format: "pct" accuracy in percent, "g" FLOPs in 1e9, or a format spec.
RUN_COLUMNS = [
    ("run", "run", ""),
    ("method", "method", ""),
    # What the run hands back comes first: a last epoch the guard or keep-best refused is not it.
    ("output_model", "output model (rule)", ""),
    ("output_test_acc", "output test acc %", "pct"),
    ("output_clean_test_acc", "output clean test acc %", "pct"),
    ("epochs", "epochs", "d"),
    ("final_test_acc", "last epoch test acc %", "pct"),
    ("best_val_acc", "best val acc %", "pct"),
    ("best_val_epoch", "best val epoch", "d"),
    ("flops_forward", "fwd GFLOP", "g"),
    ("flops_backward", "bwd GFLOP", "g"),
    ("flops_scoring", "scoring GFLOP", "g"),
    ("flops_calibration", "calibration GFLOP", "g"),
    ("flops_train", "train GFLOP", "g"),
    ("flops_bn_bank", "bank re-estimation GFLOP", "g"),
    ("train_wall_s", "train wall s", ".1f"),
    ("energy_j", "train energy J", ".1f"),
    ("energy_per_epoch_j", "J / epoch", ".1f"),
    ("energy_label", "energy source", ""),
    ("activation", "activation (records)", ".3f"),
    ("samples_trained", "samples trained", ",d"),
]


def run_row(run: RunData) -> dict:
    t = totals(run)
    label = "-" if t["energy_kind"] is None else f"{t['energy_source']} ({t['energy_kind'].split(':')[0]})"
    return {"run": run.label, **t, "energy_label": label}


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, str):          # e.g. "start" for the epoch of a run that trained none
        return value
    if spec == "pct":
        return f"{100 * value:.2f}"
    if spec == "g":
        return f"{value / 1e9:,.1f}"
    if spec in ("d", ",d"):
        return format(int(value), spec)
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def markdown(rows: list[dict], columns=RUN_COLUMNS) -> str:
    head = [h for _, h, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if s == "" else "---:" for _, _, s in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k), s).replace("|", "/") for k, _, s in columns) + " |")
    return "\n".join(lines)


def csv_text(rows: list[dict], columns=RUN_COLUMNS) -> str:
    """Raw numbers (no rounding, FLOPs in FLOPs, accuracy as a fraction) under the column keys."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow([k for k, _, _ in columns])
    for row in rows:
        w.writerow(["" if row.get(k) is None else row.get(k) for k, _, _ in columns])
    return f.getvalue()


def write_csv(rows: list[dict], path: Path, columns=RUN_COLUMNS) -> None:
    Path(path).write_text(csv_text(rows, columns), newline="")
