"""The deployed model as a symlink to a versioned directory, replaced by one atomic rename.

    checkpoints/deployed -> .deployed.versions/000007-20261123T023000Z-20261123T020000Z/
    checkpoints/.deployed.versions/<older version>/      (the previous one is kept)

A version's name begins with its number, one more than any version's before it: the order versions
were made in is that number's, never the UTC time after it (a clock set back names a newer version
earlier) nor a directory's modification time.

A new version holds the files a checkpoint consists of and nothing else (a stray output or a
damaged bank beside the deployed model is never carried on): the run's model files and BatchNorm
bank, and the run's source memory (anchors, Fisher, source weights: core/source_memory.py), or
the deployed one's when the run has none. It is built under a temporary
name, renamed into the versions directory, and the symlink is flipped by renaming a new link over
it: a reader, or a crash at any instant, sees the old model or the new one, never none. A deployed
directory that is still a plain directory is migrated by exchanging it with the link in one
renameat2(RENAME_EXCHANGE) call (Linux); where the filesystem lacks that, by two renames, and a
crash between them is repaired by the next promote (`recover`). A deployed path that is missing
with no swap under way is left missing: the warmup serves (a roll back found no version that loads).

Every change of the link or its versions (a swap and its prune, a repair, a roll back, promote from
its judging to its record) holds an exclusive lock, `.deployed.lock` beside the link while held
(deployed_lock): a manual promote or roll back beside a night waits for it, instead of pointing the
link at a version the other's prune removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from edge_sel.core import lock_file
from edge_sel.core.bn_bank import BANK_FILE
from edge_sel.core.checkpoint import copy_atomically, fsync_dir
from edge_sel.core.source_memory import SOURCE_FILES, has_source_memory
from edge_sel.engine import faults
from edge_sel.errors import InputError, WriteError, inside_file

MODEL_FILES = ("model.safetensors", "model.json")
KEEP_VERSIONS = 2            # the deployed one and the one before it
DAMAGED = ".damaged"         # a version that no longer loaded, set aside by roll_back
MIGRATED = ".migrated-from-plain"   # a plain deployed directory from before versions, kept as one
NUMBER = re.compile(r"(\d+)-")


def versions_dir(deployed: Path) -> Path:
    return deployed.parent / f".{deployed.name}.versions"


_held = threading.local()       # lock path -> how many nested holders in this thread


@contextlib.contextmanager
def deployed_lock(deployed: Path, create: bool = False):
    """Hold the exclusive lock beside `deployed` (core/lock_file.py: `.NAME.lock`, there only while
    held; the kernel drops it when its holder dies). Nested holds in one thread take it once; another
    thread or process waits, said in one line. Without `create`, a missing parent directory means
    nothing was ever deployed there, and there is nothing to lock."""
    deployed = Path(deployed)
    path = os.path.abspath(deployed.parent / f".{deployed.name}.lock")
    depth = getattr(_held, "paths", None) or {}
    _held.paths = depth
    if depth.get(path):
        depth[path] += 1
        try:
            yield
        finally:
            depth[path] -= 1
        return
    fd = None
    try:
        if create:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = lock_file.acquire(path, wait=False)
        if fd is None:
            print(f"edge-sel: waiting for another command changing --deployed {deployed} (it holds {path})",
                  file=sys.stderr, flush=True)
            fd = lock_file.acquire(path, wait=True)
    except (FileNotFoundError, PermissionError) as e:
        # Nothing deployed there yet, or a place this user cannot change: no change of ours to keep
        # apart from another's, and the write that follows says what failed in its own words.
        if create and isinstance(e, FileNotFoundError):
            raise WriteError(f"--deployed {deployed}: cannot create its lock {path}") from None
    except OSError as e:
        if e.errno != errno.EROFS:          # a read-only filesystem: as a place this user cannot change
            raise WriteError(f"--deployed {deployed}: cannot lock it with {path} ({e.strerror or e})") from None
    if fd is None:
        yield
        return
    depth[path] = 1
    try:
        yield
    finally:
        del depth[path]
        lock_file.release(path, fd)


def holds_deployed_lock(deployed: Path) -> bool:
    """Whether this thread holds deployed_lock(deployed) (without `create`, none is taken where the
    parent folder does not exist)."""
    path = os.path.abspath(Path(deployed).parent / f".{Path(deployed).name}.lock")
    return bool((getattr(_held, "paths", None) or {}).get(path))


def holding_deployed_lock(fn):
    """`fn(run_dir, deployed, ...)` run holding deployed_lock(deployed), given both as Paths."""
    @functools.wraps(fn)
    def locked(run_dir, deployed, *args, **kwargs):
        with deployed_lock(deployed):
            return fn(Path(run_dir), Path(deployed), *args, **kwargs)
    return locked


def recover(deployed: Path) -> None:
    """A deployed path left missing by a crash inside the two-rename fallback (the new link still
    waiting beside it) points again to the model deployed before, kept as VERSION.migrated-from-plain;
    leftovers of interrupted swaps are removed. A deployed path missing for any other reason (a roll
    back found no version that loads: the warmup serves) is left missing, and a version set aside
    as damaged is never deployed again."""
    deployed = Path(deployed)
    versions = versions_dir(deployed)
    if not versions.is_dir():
        return
    with deployed_lock(deployed):
        _recover(deployed, versions)


def _recover(deployed: Path, versions: Path) -> None:
    for leftover in versions.glob("*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    link_tmp = deployed.parent / f".{deployed.name}.link-tmp"
    waiting = None
    if link_tmp.is_symlink():
        waiting = (deployed.parent / os.readlink(link_tmp)).name
        link_tmp.unlink()
    elif link_tmp.is_dir():         # the old plain directory, exchanged out just before a crash
        os.replace(link_tmp, versions / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}{MIGRATED}")
    if waiting is not None and not os.path.lexists(deployed):
        before = versions / f"{waiting}{MIGRATED}"
        if (before / "model.safetensors").is_file():
            _point_link(deployed, before)


def check_deployed_place(deployed: Path, option: str = "--deployed") -> None:
    """`deployed` must be what promote manages: a link to one of its versions, a plain checkpoint
    directory (an older install, migrated), an empty directory, or nothing yet. Anything else (a
    user's file, a link elsewhere, a folder that holds no model) would be replaced: refused."""
    deployed = Path(deployed)
    if deployed.is_symlink():
        target = Path(os.path.normpath(deployed.parent / os.readlink(deployed)))
        if target.parent.resolve() != versions_dir(deployed).resolve():
            raise InputError(f"{option} {deployed}: a link to {os.readlink(deployed)}, not to a version under "
                             f"{versions_dir(deployed).name}/; promote replaces only a deployed model it manages")
    elif os.path.lexists(deployed) and not deployed.is_dir():
        raise InputError(f"{option} {deployed}: exists and is not a deployed model (a file, not a directory or "
                         f"a link to a version); promote never replaces it")
    elif deployed.is_dir() and any(deployed.iterdir()) and not (deployed / "model.safetensors").is_file():
        raise InputError(f"{option} {deployed}: a directory that holds no model (model.safetensors is missing); "
                         f"promote replaces only a deployed model")


def made_order(version: Path) -> tuple[int, int, str]:
    """Where a version stands among the others, oldest first: its number (a version named before
    numbering: -1, older than any numbered one), and a plain directory migrated aside by a swap
    just before the version of the same number."""
    name = Path(version).name
    number = NUMBER.match(name)
    return int(number.group(1)) if number else -1, 0 if name.endswith(MIGRATED) else 1, name


def other_versions(deployed: Path) -> list[Path]:
    """The complete versions besides the deployed one, newest (by number) first."""
    versions, current = versions_dir(deployed), Path(deployed).resolve()
    if not versions.is_dir():
        return []
    # Compared resolved: a relative --deployed names its versions relative too.
    return sorted((v for v in versions.iterdir() if v.is_dir() and v.resolve() != current and not v.name.endswith(".tmp")
                   and not v.name.endswith(DAMAGED)), key=made_order, reverse=True)


def roll_back(deployed: Path, back: Path | None) -> None:
    """Set the deployed version aside as VERSION.damaged (kept for a look) and point the link to
    `back`, or remove the link when None (the warmup serves)."""
    with deployed_lock(deployed):
        _roll_back(Path(deployed), back)


def _roll_back(deployed: Path, back: Path | None) -> None:
    damaged = deployed.resolve()
    if back is not None:
        _point_link(deployed, back)
    else:
        deployed.unlink()
    if damaged.parent == versions_dir(deployed).resolve():
        mark_damaged(damaged)
    fsync_dir(deployed.parent)


def mark_damaged(version: Path) -> Path:
    """Set a version that does not load aside as VERSION.damaged (kept for a look, never deployed again)."""
    version = Path(version)
    target = version.with_name(version.name + DAMAGED)
    os.replace(version, target)
    return target


def swap_in(run_dir: Path, deployed: Path) -> Path:
    """Make `run_dir`'s model files the deployed model; returns the new version directory."""
    deployed = Path(deployed)
    with deployed_lock(deployed, create=True):
        return _swap_in(Path(run_dir), deployed)


def _swap_in(run_dir: Path, deployed: Path) -> Path:
    recover(deployed)
    versions = versions_dir(deployed)
    versions.mkdir(parents=True, exist_ok=True)
    number = 1 + max([0, *(made_order(v)[0] for v in versions.iterdir())])      # set-aside ones count too
    version = versions / f"{number:06d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{Path(run_dir).name}"
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
    bank = (BANK_FILE,) if inside_file(run_dir, BANK_FILE, "RUN") else ()
    return (SOURCE_FILES if has_source_memory(run_dir) else ()) + bank + MODEL_FILES     # the card last


def _build_version(run_dir: Path, deployed: Path, staging: Path) -> None:
    """The deployed model's source memory when the run brings none, then the run's files (weights
    before card): the files a checkpoint consists of, nothing else."""
    taken = files_from_run(run_dir)
    kept = () if set(SOURCE_FILES) <= set(taken) or not has_source_memory(deployed) else SOURCE_FILES
    staging.mkdir()
    try:
        for source, names in ((deployed, kept), (run_dir, taken)):
            for name in names:         # read without following a link (refused), fsynced
                copy_atomically(source / name, staging / name, "RUN" if source == run_dir else "--deployed")
        fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _new_link(deployed: Path, version: Path) -> Path:
    """A link to `version` beside `deployed`, under the one temporary name a swap uses (a leftover
    of an interrupted swap replaced), to be renamed over or exchanged with `deployed`."""
    link_tmp = deployed.parent / f".{deployed.name}.link-tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(os.path.relpath(version, deployed.parent), link_tmp)
    return link_tmp


def _point_link(deployed: Path, version: Path) -> None:
    os.replace(_new_link(deployed, version), deployed)  # atomic: the old link or the new one (made durable by swap_in)


def _migrate(deployed: Path, version: Path) -> None:
    """A plain deployed directory becomes a link to `version`; the old directory is kept as a
    version (the previous model)."""
    link_tmp = _new_link(deployed, version)
    old = migrated_from_plain(version)
    if _exchange(link_tmp, deployed):
        fsync_dir(deployed.parent)
        faults.point("promote-exchanged")
        os.replace(link_tmp, old)           # link_tmp now names the old plain directory
    else:
        os.replace(deployed, old)
        faults.point("promote-exchanged")
        os.replace(link_tmp, deployed)
    fsync_dir(deployed.parent)


def migrated_from_plain(version: Path) -> Path:
    """Where a swap that made `version` keeps the plain deployed directory it replaced."""
    return Path(version).parent / f"{Path(version).name}{MIGRATED}"


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
    """Keep the new version and the one deployed before it (by the link, not by number: a version
    written but never deployed must not push the previous model out), then the newest others (by
    number, never by time) up to KEEP_VERSIONS."""
    keep = {Path(v).resolve() for v in keep if v is not None}
    complete = sorted((v for v in versions.iterdir()       # a version set aside as damaged is kept for a look
                       if v.is_dir() and not v.name.endswith(".tmp") and not v.name.endswith(DAMAGED)),
                      key=made_order)
    others = [v for v in complete if v.resolve() not in keep]
    room = max(0, KEEP_VERSIONS - len(keep))
    for v in others[:len(others) - room] if room else others:
        shutil.rmtree(v, ignore_errors=True)

