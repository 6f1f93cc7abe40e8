"""A report directory: report.html with PNG figures, runs.md and runs.csv beside it."""

from __future__ import annotations

from pathlib import Path

from edge_sel.core.checkpoint import atomic_write_bytes
from edge_sel.errors import InputError, writing
from edge_sel.report import fleet_plots, html, plots, tables
from edge_sel.report.runs import RunData, energy_kind, name_shifts, unique_labels


def prepare_out(out: Path) -> Path:
    """Create --out (parents too) and check that it takes files, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".edge-sel-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"--out {out}: not writable ({e.strerror or e})") from None
    return out


def energy_notes(runs: list[RunData]) -> list[str]:
    kinds = {energy_kind(r.records)[1] for r in runs}
    notes = []
    if "estimated" in kinds or "mixed" in kinds:
        notes.append("Energy figures marked 'estimated' are not measurements: no power sensor was readable, so "
                     "edge-sel estimated joules from the process's CPU time (energy_source=estimate, "
                     "energy_method=estimated). Compare them between runs on one machine only.")
    if None in kinds:
        notes.append("Some runs recorded no energy at all; they are missing from the energy axes.")
    return notes


def write_report(runs: list[RunData], out: Path, title: str = "edge-sel report", notes: list[str] = (),
                 sections: list[tuple[str, str]] = (), baseline: tuple[str, float] | None = None) -> Path:
    """Figures, tables and the page for `runs`; returns the path of report.html. `baseline`: a
    (name, test accuracy) reference line in the accuracy figures."""
    out = prepare_out(out)
    runs, repeated = distinct(runs)
    name_shifts(runs)
    unique_labels(runs)
    notes = [*warnings(runs, repeated), *notes]
    if baseline is None:
        baseline = shared_start(runs)
    rows = [tables.run_row(r) for r in runs]
    write_whole(out / "runs.md", tables.markdown(rows) + "\n")
    write_whole(out / "runs.csv", tables.csv_text(rows))
    figures = plots.write_all(runs, out, baseline) + fleet_plots.fleet_figures(runs, out)
    figures = [(*f, html.drawn_table(plots.pareto_points(runs))) if Path(f[1]).name == "pareto.png" else f
               for f in figures]
    info = [(r.label, [str(p) for p in r.paths]) for r in runs]
    page = html.page(title, rows, figures, [*energy_notes(runs), *notes], sections, info)
    path = out / "report.html"
    write_whole(path, page)
    return path


def distinct(runs: list[RunData]) -> tuple[list[RunData], list[str]]:
    """Each run directory once, in the order first named; and a line for each named again."""
    seen: dict[tuple, int] = {}
    kept, repeated = [], []
    for r in runs:
        key = tuple(p.resolve() for p in r.paths) or (id(r),)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            kept.append(r)
        elif seen[key] == 2:
            repeated.append(f"{r.paths[-1]} was named more than once; it is shown once")
    return kept, repeated


def warnings(runs: list[RunData], repeated: list[str] = ()) -> list[str]:
    """Files found cut or missing, runs named twice: said at the top of the page."""
    return [*(f"Warning: {r.label} ({r.paths[-1]}): {w}." for r in runs for w in r.warnings),
            *(f"Note: {line}." for line in repeated)]


def write_whole(path: Path, text: str) -> None:
    """The file whole or not at all (a full disk is one line naming it)."""
    with writing(path):
        atomic_write_bytes(path, text.encode("utf-8"))


def shared_start(runs: list[RunData]) -> tuple[str, float] | None:
    """When every run starts from the same checkpoint on the same test data, its accuracy is the
    reference line of the accuracy figures."""
    accs = {r.baseline.get("test_acc") for r in runs if r.baseline is not None}
    if len(accs) == 1 and all(r.baseline is not None for r in runs) and None not in accs:
        return "starting checkpoint", accs.pop()
    return None
