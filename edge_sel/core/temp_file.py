"""A file replaced whole: written under a temporary name beside it, then renamed over it.

The temporary file is created by this process alone (O_EXCL | O_NOFOLLOW added to an ordinary
open's flags) under a name with random letters in it: a link or a file that someone left at a name
known in advance (the old `.metrics.csv.tmp`, `.state.tmp{pid}`) is never written through, and a
name taken is tried again. tempfile.mkstemp does the same but makes its file 0600; this one is made
0666 less the umask, as every other output is (a service account reads the models a user's runs
write)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

_TRIES = 100


def _exclusive(path, flags: int) -> int:
    return os.open(path, flags | os.O_EXCL | os.O_NOFOLLOW, 0o666)


def open_new(path: Path, mode: str = "wb", prefix: str | None = None, **kwargs):
    """(a new file beside `path` that no one else had opened, opened with `mode`, which writes; its
    name). `prefix`: the name's start (default `.NAME.tmp`). Raises OSError (a missing folder, a full disk)."""
    path = Path(path)
    start = prefix if prefix is not None else f".{path.name}.tmp"
    for _ in range(_TRIES):
        tmp = path.with_name(f"{start}{secrets.token_hex(6)}")
        try:
            return open(tmp, mode, opener=_exclusive, **kwargs), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name after {_TRIES} tries")


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb", sync: bool = True, **kwargs):
    """The open temporary file (yielded) that replaces `path` once the block ends without error,
    flushed and (with `sync`) fsynced first; on error it is removed and `path` is as it was."""
    f, tmp = open_new(path, mode, **kwargs)
    placed = False
    try:
        with f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        placed = True
    finally:
        if not placed:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
