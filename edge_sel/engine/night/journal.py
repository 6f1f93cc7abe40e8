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
version again."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def journal_path(deployed: Path) -> Path:
    deployed = Path(deployed)
    return deployed.parent / f"{deployed.name}.history.jsonl"


def append(deployed: Path, event: str, **fields) -> dict:
    """Add one line; returns it. Raises OSError (the caller says what failing to record means)."""
    line = {"event": event, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    data = (json.dumps(line, default=str) + "\n").encode()
    path = journal_path(deployed)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_a_line(path):
            data = b"\n" + data         # a line torn by a power loss is closed, not continued
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return line


def _ends_a_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read(deployed: Path) -> list[dict]:
    """The journal's lines, oldest first; torn or foreign lines are skipped."""
    try:
        text = journal_path(deployed).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
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
