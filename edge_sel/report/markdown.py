"""The little markdown the benchmark tables are written in (headings, pipe tables, `code`, plain
lines), as HTML: a report page shows real tables, not their source text."""

from __future__ import annotations

import re

from edge_sel.report.html import esc

CODE = re.compile(r"`([^`]*)`")


def inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = CODE.split(text)
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def is_rule(line: str) -> bool:
    """A pipe table's separator row, e.g. |---|:--:|."""
    return bool(line.strip().startswith("|")) and all(re.fullmatch(r":?-+:?", c) for c in cells(line))


def table(lines: list[str]) -> str:
    head, body = cells(lines[0]), [cells(line) for line in lines[2:]]
    numeric = re.compile(r"[-+−]?[\d.,]+%?|\[[-+\d., ]+\]|-")
    rows = "".join("<tr>" + "".join(f"<td class=\"{'num' if numeric.fullmatch(c) else ''}\">{inline(c)}</td>"
                                     for c in row) + "</tr>" for row in body)
    return (f"<div class=\"wide\"><table><thead><tr>{''.join(f'<th>{inline(h)}</th>' for h in head)}</tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def markdown_html(text: str) -> str:
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("|") and i + 1 < len(lines) and is_rule(lines[i + 1]):
            end = i + 2
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            out.append(table(lines[i:end]))
            i = end
            continue
        heading = re.match(r"(#{1,6})\s+(.*)", line)
        if heading:
            level = min(len(heading.group(1)) + 1, 6)      # the page's own title is the h1
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def bench_page(title: str, tables_md: str, figures: list[str], notes: list[str]) -> str:
    """A benchmark's report.html: its tables as HTML tables, its figures (file names beside the
    page), its notes."""
    from edge_sel.report.html import CSS
    images = "".join(f"<figure><img src=\"{esc(name)}\" alt=\"{esc(name)}\"></figure>" for name in figures)
    listed = "".join(f"<li>{inline(n)}</li>" for n in notes)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{markdown_html(tables_md)}{images}"
            f"<ul>{listed}</ul></body></html>")
