"""What a benchmark leaves in OUT: bench.json, table.md, table.csv and report/report.html."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edge_sel.bench import table
from edge_sel.bench.runner import SuiteSettings, aggregate
from edge_sel.core.checkpoint import atomic_write_bytes
from edge_sel.report.html import esc
from edge_sel.report.writer import write_report

START_ROW = "start checkpoint (no fine-tuning)"


def _energy_kind(agg: dict) -> str:
    kinds = {a.get("energy_kind") for a in agg.values()} - {None}
    if not kinds:
        return "not measured"
    return kinds.pop() if len(kinds) == 1 else "mixed: " + ", ".join(sorted(kinds))


def write_outputs(s: SuiteSettings, result: dict, published: dict | None) -> dict:
    names = [sys_.name for sys_ in s.systems]
    agg = {name: aggregate(result["results"][name]) for name in names}
    start_agg = aggregate(result["start"])
    kind = _energy_kind(agg)
    cols = table.columns(kind, result["test_full_size"], result["test_100_size"], published is not None)
    rows = table.rows([START_ROW] + names, {START_ROW: start_agg, **agg}, published)
    md = table.markdown(cols, rows)
    notes = list(s.notes) + [
        "FLOPs are counted (torch.utils.flop_counter) for every training, scoring and calibration pass actually "
        "run; evaluation is excluded. 'train FLOPs / dense' compares counted training FLOPs with the dense system.",
        f"Energy is training-phase energy from the records ({kind}); "
        + ("an estimate from CPU time, not a measurement." if "estimated" in kind else "as measured by the meter."),
        "Activation: share of available training samples that ran forward and backward; 'loss counted' is the "
        "gate's own share when it computes every sample (ast-prod); 'matched' is the activation a random control "
        "was run at, read from its gated system's records for the same seed.",
    ]
    busy = [f"{name} (seed {r['seed']}: {r['other_load']:.1f})" for name in names for r in result["results"][name]
            if r.get("other_load", 0) > 0.5]
    if busy:
        notes.append("Other processes competed for the CPU (1-minute load average beyond this run's threads) "
                     "during: " + ", ".join(busy) + ". Their wall time and CPU-time energy estimates are inflated; "
                     "counted FLOPs and accuracy are unaffected.")
    ran = sorted({r.get("precision") or "fp32" for name in names for r in result["results"][name]})
    notes.append("Precision (--precision; auto is measured per device): " + " | ".join(ran) + ". The table's "
                 "test accuracy is evaluated in fp32 after the run whatever the runs' precision.")
    notes.append(f"{START_ROW}: the weights every system starts from, evaluated the same way.")
    notes += [f"{sys_.name}: {sys_.note}" for sys_ in s.systems if sys_.note]
    (s.out / "table.md").write_text(md + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    table.write_csv(s.out / "table.csv", [START_ROW] + names, {START_ROW: start_agg, **agg})
    bench = {
        "suite": s.name, "device": result["device"], "seeds": s.seeds, "wall_s": result["wall_s"],
        "data": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s.data).items()},
        "test_full_size": result["test_full_size"], "test_100_size": result["test_100_size"],
        "start_checkpoints": {str(k): str(v) for k, v in s.start.items()},
        "common_training": s.common, "energy_kind": kind, "notes": notes, "start_accuracy": result["start"],
        "systems": [{"name": sys_.name, "note": sys_.note, "control_of": sys_.control_of,
                     "steps": [dataclasses.asdict(st) | {"kind": type(st).__name__} for st in sys_.steps],
                     "per_seed": result["results"][sys_.name], "mean_std": agg[sys_.name],
                     "published": (published or {}).get(sys_.name)} for sys_ in s.systems],
    }
    (s.out / "bench.json").write_text(json.dumps(bench, indent=2, default=str))
    if not s.report:
        return {"table": md, "report": None, "aggregate": agg}
    from edge_sel.report.html import table_html
    section = table_html([(k, h, "") for k, h in cols], rows) + "<ul>" + "".join(
        f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
    report_notes = ["Per-epoch test accuracy in these plots is on the evaluation set the runs used every epoch "
                    f"({'the first 100 images of each class' if s.data.epoch_test_per_class else 'the full test set'}); "
                    "the tables' final test accuracy is the full test set, evaluated after the last epoch."]
    report = write_report(result["runs"], s.out / "report", f"edge-sel bench {s.name}", report_notes,
                          [("Benchmark table (mean ± std over seeds)", section)],
                          baseline=(START_ROW, start_agg["test_full_acc"]["mean"]))
    return {"table": md, "report": report, "aggregate": agg}


def write_bench_files(out: Path, name: str, md: str, notes: list[str], bench: dict, make_figure,
                      json_name: str = "bench.json") -> dict:
    """A bench's table.md (its table and notes), its record as JSON, then its figure
    (`make_figure()`) and report.html: what bench memory, stream and transfer each write. Without
    `make_figure` (a bench's record between its runs) the figure and report are left as they are."""
    from edge_sel.report.markdown import bench_page
    text = md + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    # Rewritten after every run while a bench runs: whole or as before (a bench stopped or a disk
    # full mid-write left a torn results.json, which a merge then could not read).
    atomic_write_bytes(out / "table.md", text.encode())
    atomic_write_bytes(out / json_name, json.dumps(bench, indent=2, default=str).encode())
    if make_figure is None:
        return {"table": text, "figure": None}
    made = make_figure()             # a figure, or a list of them (the first is `figure`)
    figures = list(made) if isinstance(made, (list, tuple)) else [made]
    (out / "report.html").write_text(bench_page(f"edge-sel bench {name}", md, [f.name for f in figures], notes))
    return {"table": text, "figure": figures[0], "figures": figures}
