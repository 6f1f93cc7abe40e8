"""What serves now and what served before (the journal, engine/night/journal.py, read against the
versions on disk), and a roll back by the user to an earlier version that still loads."""

from __future__ import annotations

import os
from pathlib import Path

from edge_sel.core.checkpoint import fsync_dir
from edge_sel.engine.night import journal
from edge_sel.engine.night.deployed_swap import (DAMAGED, _point_link, check_deployed_place, deployed_lock,
                                                 other_versions, versions_dir)
from edge_sel.errors import InputError, WriteError


def serving(deployed: Path) -> str | None:
    """The version the deployed link names now (its directory name); None: nothing is deployed
    (the warmup serves), or a plain directory from before versions."""
    deployed = Path(deployed)
    if not deployed.is_symlink():
        return None
    return Path(os.readlink(deployed)).name


def on_disk(deployed: Path, version: str | None) -> str:
    """Whether a version named in the journal is still kept: "kept", "set aside as damaged", "pruned"."""
    if version is None:
        return "the warmup"
    versions = versions_dir(deployed)
    if (versions / version).is_dir():
        return "kept"
    if (versions / (version + DAMAGED)).is_dir():
        return "set aside as damaged"
    return "pruned"


def describe(line: dict) -> str:
    """One journal line in words."""
    event, name = line.get("event"), _name(line.get("version"))
    run = line.get("run")
    if event == "decision":
        verdict = "promoted" if line.get("promote") else "not promoted"
        return f"{verdict} ({line.get('rule')}): {run}: {line.get('why')}"
    if event == "deployed":
        return f"deployed {name} from {run} ({line.get('rule')}), after {_name(line.get('previous')) or 'the warmup'}"
    if event == "swap-failed":
        return f"swap failed for {run}: {line.get('error')}; what served before still serves"
    if event == "rolled-back":
        return (f"rolled back by the {line.get('by')} from {_name(line.get('previous')) or 'the warmup'} to "
                f"{name or 'the warmup'}: {line.get('why')}")
    return f"{event}"


def history_lines(deployed: Path, last: int | None = None) -> list[str]:
    """What `edge-sel deployed history` prints: what serves now, then the journal newest first."""
    deployed = Path(deployed)
    lines = journal.read(deployed)
    now = serving(deployed)
    if now is not None:
        said = f"serving now: {now}"
    elif deployed.is_dir():
        said = f"serving now: {deployed} (a plain directory: promote makes it a version)"
    else:
        said = "serving now: the warmup (nothing is deployed)"
    before = journal.served_before(lines, now)
    out = [said + (f"; before it: {before} ({on_disk(deployed, before)})" if before else "")]
    shown = lines[::-1] if last is None else lines[::-1][:last]
    out += [f"{line.get('when', '?')}  {describe(line)}" for line in shown]
    if not lines:
        out.append(f"(no history yet at {journal.journal_path(deployed)})")
    return out


def roll_back_to(deployed: Path, to: str | None, load_error) -> tuple[str | None, Path]:
    """Deploy an earlier version again (`to`: its name; None: the one that served before the
    current one, else the newest other version kept). It must load (`load_error(path)` is None).
    Returns (the version that served, the one that serves now)."""
    with deployed_lock(deployed):           # chosen and pointed to with no other change between
        return _roll_back_to(Path(deployed), to, load_error)


def _roll_back_to(deployed: Path, to: str | None, load_error) -> tuple[str | None, Path]:
    check_deployed_place(deployed)
    if not deployed.is_symlink():
        raise InputError(f"--deployed {deployed}: no version is deployed there (a plain directory or nothing); "
                         f"nothing to roll back")
    now = serving(deployed)
    if to is None:
        to = journal.served_before(journal.read(deployed), now)
        if to is None or on_disk(deployed, to) != "kept":
            kept = other_versions(deployed)
            if not kept:
                raise InputError(f"--deployed {deployed}: no earlier version is kept to roll back to")
            to = kept[0].name
    target = versions_dir(deployed) / to
    if Path(to).name != to or to.endswith((".tmp", DAMAGED)) or not target.is_dir():
        kept = ", ".join(v.name for v in other_versions(deployed)) or "none"
        raise InputError(f"--to {to}: not a version kept under {versions_dir(deployed)} (kept: {kept})")
    if to == now:
        raise InputError(f"--to {to}: already the deployed version")
    why = load_error(target)
    if why is not None:
        raise InputError(f"--to {to}: does not load ({why}); the deployed model stays")
    previous = deployed.resolve()
    try:
        _point_link(deployed, target)
        fsync_dir(deployed.parent)
    except OSError as e:
        raise WriteError(f"--deployed {deployed}: cannot roll back ({e.strerror or e}); it is unchanged") from None
    try:
        journal.append(deployed, "rolled-back", version=str(target), previous=str(previous), why="asked for",
                       by="user")
    except OSError:
        pass                    # done all the same; said by the caller's line
    return now, target


def _name(version) -> str | None:
    return Path(version).name if isinstance(version, str) and version else None
