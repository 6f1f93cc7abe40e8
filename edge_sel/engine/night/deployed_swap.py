"""The deployed model as a symlink to a versioned directory, replaced by one atomic rename.

    checkpoints/deployed -> .deployed.versions/20261123T023000Z-20261123T020000Z/
    checkpoints/.deployed.versions/<older version>/      (the previous one is kept)

A new version is a full copy of the deployed directory's files (notes, anything a site put there)
with the run's model files in place of the old ones, and the run's source memory (anchors, Fisher,
source weights: core/source_memory.py) in place of the old when the run has it. It is built under a temporary
name, renamed into the versions directory, and the symlink is flipped by renaming a new link over
it: a reader, or a crash at any instant, sees the old model or the new one, never none. A deployed
directory that is still a plain directory is migrated by exchanging it with the link in one
renameat2(RENAME_EXCHANGE) call (Linux); where the filesystem lacks that, by two renames, and a
crash between them is repaired by the next promote (`recover`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time
from pathlib import Path

from edge_sel.core.bn_bank import BANK_FILE
from edge_sel.core.checkpoint import fsync_dir
from edge_sel.core.source_memory import SOURCE_FILES, has_source_memory
from edge_sel.engine import faults

MODEL_FILES = ("model.safetensors", "model.json")
KEEP_VERSIONS = 2            # the deployed one and the one before it
DAMAGED = ".damaged"         # a version that no longer loaded, set aside by roll_back


def versions_dir(deployed: Path) -> Path:
    return deployed.parent / f".{deployed.name}.versions"


def recover(deployed: Path) -> None:
    """A deployed path left missing (a crash inside the two-rename fallback) points again to the
    newest complete version; leftovers of interrupted swaps are removed."""
    versions = versions_dir(deployed)
    if not versions.is_dir():
        return
    for leftover in versions.glob("*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    link_tmp = deployed.parent / f".{deployed.name}.link-tmp"
    if link_tmp.is_symlink():
        link_tmp.unlink()
    elif link_tmp.is_dir():         # the old plain directory, exchanged out just before a crash
        os.replace(link_tmp, versions / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.migrated-from-plain")
    if not os.path.lexists(deployed):
        complete = sorted(v for v in versions.iterdir()
                          if (v / "model.safetensors").is_file() and not v.name.endswith(DAMAGED))
        if complete:
            _point_link(deployed, complete[-1])


def other_versions(deployed: Path) -> list[Path]:
    """The complete versions besides the deployed one, newest name first."""
    versions, current = versions_dir(deployed), Path(deployed).resolve()
    if not versions.is_dir():
        return []
    return sorted((v for v in versions.iterdir() if v.is_dir() and v != current and not v.name.endswith(".tmp")
                   and not v.name.endswith(DAMAGED)), reverse=True)


def roll_back(deployed: Path, back: Path | None) -> None:
    """Set the deployed version aside as VERSION.damaged (kept for a look) and point the link to
    `back`, or remove the link when None (the warmup serves)."""
    deployed = Path(deployed)
    damaged = deployed.resolve()
    if back is not None:
        _point_link(deployed, back)
    else:
        deployed.unlink()
    if damaged.parent == versions_dir(deployed).resolve():
        os.replace(damaged, damaged.with_name(damaged.name + DAMAGED))
    fsync_dir(deployed.parent)


def swap_in(run_dir: Path, deployed: Path) -> Path:
    """Make `run_dir`'s model files the deployed model; returns the new version directory."""
    deployed = Path(deployed)
    recover(deployed)
    versions = versions_dir(deployed)
    versions.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{Path(run_dir).name}"
    version = versions / name
    n = 1
    while version.exists():
        n += 1
        version = versions / f"{name}.{n}"
    staging = version.with_name(version.name + ".tmp")
    _build_version(Path(run_dir), deployed, staging)
    faults.point("promote-staged")
    os.replace(staging, version)
    fsync_dir(versions)
    faults.point("promote-versioned")
    previous = deployed.resolve() if deployed.is_symlink() else None
    if deployed.is_dir() and not deployed.is_symlink():
        _migrate(deployed, version)
    else:
        _point_link(deployed, version)
    faults.point("promote-flipped")
    # From here the new model is deployed: a failure to make that durable or to tidy up is reported
    # as what it is, not as a swap that did not happen.
    try:
        fsync_dir(deployed.parent)
        _prune(versions, keep={version, previous})
    except OSError as e:
        raise AfterSwapError(version, e) from None
    return version


class AfterSwapError(OSError):
    """The deployed link already names the new version; a step after the flip failed."""

    def __init__(self, version: Path, cause: OSError):
        super().__init__(f"{cause.strerror or cause}")
        self.version = version


def files_from_run(run_dir: Path) -> tuple[str, ...]:
    """The model files, and the source memory when the run holds it (carried from its checkpoint):
    a run without it leaves the deployed directory's in place. A BatchNorm bank belongs to the
    weights beside it: the run's is deployed, and a run without one leaves none behind."""
    bank = (BANK_FILE,) if (Path(run_dir) / BANK_FILE).is_file() else ()
    return (SOURCE_FILES if has_source_memory(run_dir) else ()) + bank + MODEL_FILES     # the card last


def _build_version(run_dir: Path, deployed: Path, staging: Path) -> None:
    """The deployed directory's other files, then the run's (weights before card)."""
    staging.mkdir()
    taken = files_from_run(run_dir)
    if deployed.is_dir():
        for item in deployed.iterdir():
            if item.name in taken or item.name == BANK_FILE:
                continue
            target = staging / item.name
            if item.is_dir():
                shutil.copytree(item, target, symlinks=True)
            else:
                shutil.copy2(item, target, follow_symlinks=False)
                _fsync_file(target)
    for name in taken:
        shutil.copy2(run_dir / name, staging / name)
        _fsync_file(staging / name)
    fsync_dir(staging)


def _point_link(deployed: Path, version: Path) -> None:
    link_tmp = deployed.parent / f".{deployed.name}.link-tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(os.path.relpath(version, deployed.parent), link_tmp)
    os.replace(link_tmp, deployed)          # atomic: the old link or the new one (made durable by swap_in)


def _migrate(deployed: Path, version: Path) -> None:
    """A plain deployed directory becomes a link to `version`; the old directory is kept as a
    version (the previous model)."""
    link_tmp = deployed.parent / f".{deployed.name}.link-tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(os.path.relpath(version, deployed.parent), link_tmp)
    old = version.parent / f"{version.name}.migrated-from-plain"
    if _exchange(link_tmp, deployed):
        fsync_dir(deployed.parent)
        faults.point("promote-exchanged")
        os.replace(link_tmp, old)           # link_tmp now names the old plain directory
    else:
        os.replace(deployed, old)
        faults.point("promote-exchanged")
        os.replace(link_tmp, deployed)
    fsync_dir(deployed.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    if os.environ.get("EDGE_SEL_NO_RENAME_EXCHANGE"):     # tests of the two-rename fallback
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):        # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def _prune(versions: Path, keep: set) -> None:
    """Keep the new version and the one deployed before it (by the link, not by modification time:
    a version written but never deployed, or a clock that jumped, must not push the previous model
    out), then the newest others up to KEEP_VERSIONS."""
    keep = {Path(v).resolve() for v in keep if v is not None}
    complete = sorted((v for v in versions.iterdir()       # a version set aside as damaged is kept for a look
                       if v.is_dir() and not v.name.endswith(".tmp") and not v.name.endswith(DAMAGED)),
                      key=lambda v: v.stat().st_mtime)
    others = [v for v in complete if v.resolve() not in keep]
    room = max(0, KEEP_VERSIONS - len(keep))
    for v in others[:len(others) - room] if room else others:
        shutil.rmtree(v, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
