"""`edge-sel report RUN... --out DIR`: report.html with PNG figures, runs.md and runs.csv beside it."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sel.cli_base import Command
from edge_sel.core.outputs import check_out_dir, staged_out_dir
from edge_sel.report.runs import load_run


@click.command("report", cls=Command)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for report.html, its PNG figures, runs.md and runs.csv.")
@click.option("--title", default="edge-sel report", show_default=True, help="Title of the report page.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory (its old figures go too).")
def report_cmd(runs: tuple[Path, ...], out: Path, title: str, overwrite: bool):
    """Plots and tables for one or more run directories, as a self-contained HTML page."""
    loaded = [load_run(p) for p in runs]       # every RUN checked before anything is written
    # A new report beside an old one's PNGs would mix the two: the --overwrite rule of every command.
    out = check_out_dir(out, overwrite, "report", [("RUN", p) for p in runs])
    # matplotlib is imported here, not when the command line starts: every command would pay for it.
    from edge_sel.report.writer import distinct, warnings, write_report
    for line in warnings(*distinct(loaded)):
        click.echo(f"edge-sel report: {line}", err=True)
    with staged_out_dir(out, "report") as staging:
        write_report(loaded, staging, title)
    click.echo(f"report: {out / 'report.html'}")
