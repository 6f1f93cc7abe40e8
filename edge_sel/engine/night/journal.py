"""The deployed model's history: an append-only journal of every decision and deployment, never
rewritten.

    checkpoints/deployed.history.jsonl      (beside the deployed link)

One JSON object a line, each with `event` and `when` (UTC):

    decision      promote judged a run (all its figures); written before a swap, so a crash after
                  the link flips never leaves a deployed model no line accepted
    deployed      the run's model now serves: `version`, and `previous` (what served before)
    swap-failed   the swap did not happen (`error`); what served before still serves
    rolled-back   `version` (None: the warmup) serves again instead of `previous`: `why`, and `by`
                  (the night, for a model that no longer loads, or the user)

Lines are written whole with one O_APPEND write each, then fsynced; a line torn by a power loss is
skipped when read (`read`), and the next line starts on its own. `edge-sel deployed history`
shows what serves now and what served before; `edge-sel deployed roll-back` deploys an earlier
version again.

A run keeps its own part of that history in the same way, never rewritten either:

    RUN/promote.jsonl       decision, then deployed or swap-failed, for each time promote judged it

(`run_decisions` reads it back, each decision with what came of it.)"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from edge_sel.core.records import open_to_append
from edge_sel.errors import parse_json, read_json


def journal_path(deployed: Path) -> Path:
    deployed = Path(deployed)
    return deployed.parent / f"{deployed.name}.history.jsonl"


RUN_FILE = "promote.jsonl"


def run_path(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_FILE


def append(deployed: Path, event: str, **fields) -> dict:
    """Add one line to the deployed model's journal; returns it. Raises OSError (the caller says
    what failing to record means)."""
    return append_to(journal_path(deployed), event, **fields)


def append_to(path: Path, event: str, **fields) -> dict:
    """Add one line to the journal at `path` (created when missing); returns it."""
    line = {"event": event, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    data = (json.dumps(line, default=str) + "\n").encode()
    fd = open_to_append(path)           # never through a link
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data         # a line torn by a power loss is closed, not continued
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return line


def read(deployed: Path) -> list[dict]:
    """The deployed model's journal, oldest first; torn or foreign lines are skipped."""
    return read_from(journal_path(deployed))


def run_decisions(run_dir: Path) -> list[dict]:
    """Every decision promote made about a run, oldest first, each with what came of it: `version`
    once the run's model served (and `after_swap_error` when a step after the flip failed), or
    `swap_error`. A run judged before this journal existed: the one decision of its promote.json."""
    decisions = []
    for line in read_from(run_path(run_dir)):
        event = line.pop("event")
        if event == "decision":
            decisions.append(line)
        elif decisions and event == "deployed":
            decisions[-1].update({k: line[k] for k in ("version", "after_swap_error") if k in line})
        elif decisions and event == "swap-failed":
            decisions[-1]["swap_error"] = line.get("error")
    if not decisions:
        try:
            old = read_json(Path(run_dir) / "promote.json")
        except (OSError, ValueError):
            return []
        decisions = [old] if isinstance(old, dict) else []
    return decisions


def last_decision(run_dir: Path) -> dict | None:
    """The newest of `run_decisions`, or None when promote never judged the run."""
    decisions = run_decisions(run_dir)
    return decisions[-1] if decisions else None


def read_from(path: Path) -> list[dict]:
    """A journal's lines, oldest first; torn or foreign lines are skipped."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            line = parse_json(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("event"), str):
            lines.append(line)
    return lines


def served_before(lines: list[dict], now: str | None) -> str | None:
    """The version that served before `now` (a version's directory name), by the journal's last
    line that put `now` in place; None when the journal does not say."""
    for line in reversed(lines):
        if line.get("event") in ("deployed", "rolled-back") and _name(line.get("version")) == now:
            return _name(line.get("previous"))
    return None


def _name(version) -> str | None:
    return Path(version).name if isinstance(version, str) and version else None
