"""Small shared helpers for tests: run the CLI in-process and read run directories."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edge_sel.cli import cli
from edge_sel.core.records import VOLATILE_FIELDS, read_records


def run_cli(*args, expect: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def records(run_dir: Path, baseline: bool = False) -> list[dict]:
    """The epoch records of a run; with `baseline`, the starting checkpoint's evaluation first."""
    recs = read_records(Path(run_dir) / "metrics.jsonl")
    return recs if baseline else [r for r in recs if r.get("phase") != "baseline"]


def stable(recs: list[dict]) -> list[dict]:
    """Records without the fields that measure time, memory or energy."""
    return [{k: v for k, v in r.items() if k not in VOLATILE_FIELDS} for r in recs]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
