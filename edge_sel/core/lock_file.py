"""An exclusive lock that is a file only while it is held: `acquire` creates PATH and flocks it,
`release` removes it. The kernel drops a flock when its holder dies, so a crash leaves at most an
unlocked file, which the next `acquire` takes over. A holder that got the lock on a file already
removed (opened just before its last holder released it) sees that its file is no longer PATH and
tries again, so two holders never hold two files under one name."""

from __future__ import annotations

import fcntl
import os


def acquire(path, wait: bool) -> int | None:
    """The descriptor holding the lock on `path`, or None when another holds it and not `wait`.
    Raises OSError when the file cannot be made (a missing folder, no permission, a link there)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        held = os.fstat(fd)
        try:
            now = os.stat(path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)            # a file its holder removed: lock PATH as it is now


def release(path, fd: int) -> None:
    """Remove the lock's file, then let go of it (in that order: see acquire)."""
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)
