"""One self-contained HTML page: inline CSS, no scripts, images by relative path beside it."""

from __future__ import annotations

import datetime
import html
from pathlib import Path

from edge_sel.report.tables import RUN_COLUMNS, fmt

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1250px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.75em; margin: 0.5em auto 0.5em 0; }
/* A table wider than the text column takes the window's width (its headings wrap) rather than run
   past the window's edge; only wider than the window does it scroll. */
.wide { width: calc(100vw - 3em); margin-left: calc(50% - 50vw + 1.5em); overflow-x: auto; }
.wide table { margin: 0.5em auto; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.3em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; font-size: 0.9em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def table_html(columns, rows: list[dict]) -> str:
    """columns: (key, heading, format) as in tables.RUN_COLUMNS."""
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"{'num' if spec else ''}\">{esc(fmt(row.get(k), spec))}</td>"
                        for k, _, spec in columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


# The values the accuracy figure draws, so a reader (and a test) can check them against the runs.
DRAWN_COLUMNS = [("run", "run", ""), ("acc", "accuracy drawn %", "pct"), ("drawn", "which model", ""),
                 ("last_acc", "last epoch test acc %", "pct"), ("energy_j", "training energy J", ".1f"),
                 ("flops", "adaptation GFLOP", "g")]


def drawn_table(points: list[dict]) -> str:
    rows = [{**p, "drawn": "output model" if p["output"] else "last epoch (no output model stated)"} for p in points]
    return table_html(DRAWN_COLUMNS, rows).replace("<table>", "<table class=\"drawn\">", 1)


def page(title: str, rows: list[dict], figures: list[tuple[str, Path, str]], notes: list[str],
         sections: list[tuple[str, str]] = (), runs_info: list[tuple[str, list[str]]] = ()) -> str:
    """`figures`: (title, png path, caption), referenced by file name (they sit beside the page).
    `sections`: extra (heading, html) blocks placed before the run table (e.g. a benchmark table)."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p>Generated {esc(datetime.datetime.now().strftime('%Y-%m-%d %H:%M'))} by edge-sel.</p>"]
    for note in notes:
        parts.append(f"<p class=\"note\">{esc(note)}</p>")
    for heading, block in sections:
        parts.append(f"<h2>{esc(heading)}</h2>{block}")
    parts.append("<h2>Runs</h2>")
    parts.append(table_html(RUN_COLUMNS, rows))
    parts.append("<p>The output model is the model a run hands back (what <code>promote</code> would deploy), and the "
                 "rule that chose it: its test accuracy on the run's (device's) test data, and on the server's clean "
                 "test data where the run's data were shifted. The last epoch's test accuracy comes after it: a "
                 "last epoch that keep-best or the guard refused is not what the run delivers. Activation is the "
                 "share of local samples trained on, as the records state it.</p>")
    parts.append("<p>FLOPs are counted with torch.utils.flop_counter for the passes actually run (training, "
                 "scoring and calibration passes; evaluation excluded). Tables beside this page: "
                 "<a href=\"runs.md\">runs.md</a>, <a href=\"runs.csv\">runs.csv</a>.</p>")
    for fig_title, png, caption, *after in figures:
        parts.append(f"<h2>{esc(fig_title)}</h2><figure><img src=\"{esc(Path(png).name)}\" "
                     f"alt=\"{esc(fig_title)}\"><figcaption>{esc(caption)}</figcaption></figure>{''.join(after)}")
    if runs_info:
        parts.append("<h2>Run directories</h2><ul>")
        for label, paths in runs_info:
            parts.append(f"<li>{esc(label)}: {', '.join(f'<code>{esc(p)}</code>' for p in paths)}</li>")
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
