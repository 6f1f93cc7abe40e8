"""The device's cache files (counts, step costs, probes, decoded images): figures this user's runs
measured, trusted only while they are still this user's alone.

A cache folder may be one others can write (a shared /var/cache, a home made group-writable). A file
another user left there, or one anyone may write, would steer a run's choice (a step-costs.json owned
by another user made a run choose full fine-tuning at "0 J estimated"). So a cache file is read only
where it is a regular file reached without following a link, owned by this user (the effective uid)
and writable by no one else; anything else is set aside (never read) with one line, and what it held
is measured again. A file is written under a new name of its own (no link followed, nothing planted
under a known name written through), without write permission for group or others whatever the
umask, and renamed over the old name; where that cannot be done the caller says so and goes on
without caching."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path

from edge_sel.core.temp_file import replacing

# Reading a file to use: no link followed, no wait on a FIFO planted under its name, not inherited.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotOurs(Exception):
    """A cache file that is not only this user's to write; the message says what, in one line."""


def not_ours(path, st: os.stat_result) -> str | None:
    """Why a file or folder with status `st` is not only this user's to write; None where it is."""
    me = os.geteuid()
    if st.st_uid != me:
        return f"{path}: owned by user {st.st_uid}, not by this user ({me})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def open_own(path, folder: int | None = None, shown=None) -> int | None:
    """A read-only descriptor of the file `path` (relative to the folder open as `folder` where given),
    or None where there is none; raises NotOurs (naming it as `shown`, else `path`) where it is a link,
    not a regular file, unreadable, or not only this user's. The caller closes it."""
    shown = path if shown is None else shown
    try:
        fd = os.open(path, READ_FLAGS, dir_fd=folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotOurs(f"{shown}: a link, not a file") from None
        raise NotOurs(f"{shown}: {e.strerror or e}") from None
    st = os.fstat(fd)
    why = None if stat.S_ISREG(st.st_mode) else f"{shown}: not a regular file"
    why = why or not_ours(shown, st)
    if why is not None:
        os.close(fd)
        raise NotOurs(why)
    return fd


_said: set[str] = set()


def set_aside(why: str, then: str = "what it holds is measured again") -> None:
    """One line (once a process for each file and reason) saying a cache file was not read, and why."""
    if why not in _said:
        _said.add(why)
        warnings.warn(f"{why}: set aside, not read; {then}", stacklevel=2)


def private_mode(fd: int) -> None:
    """The open file's mode without write permission for group or others (the umask may have left it)."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.fchmod(fd, mode & ~(stat.S_IWGRP | stat.S_IWOTH))


def write_own(path: Path, data: bytes) -> None:
    """`data` whole under `path`, or `path` as it was: written to a new file of this process's own
    (temp_file.replacing), writable by this user alone, then renamed over `path` (a link there is
    replaced, never followed). Raises OSError where it cannot be (a read-only home; another user's file
    in a folder whose sticky bit keeps it theirs)."""
    with replacing(Path(path)) as f:
        private_mode(f.fileno())
        f.write(data)
