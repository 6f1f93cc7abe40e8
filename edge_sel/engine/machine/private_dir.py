"""A folder only this user can write, and its files read without following links: where code that a
run builds for itself is kept and loaded from (cpu_pool.py).

The folder is opened once (never through a link) and checked on that descriptor; every file in it is
then reached through the descriptor, so another user who can write the folder's parent may rename or
replace the path but never what this process reads, writes or loads."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from pathlib import Path

from edge_sel.core.own_files import NotOurs, not_ours, open_own


class Untrusted(Exception):
    """A folder or file that is not only this user's to write; the message says what, in one line."""


def open_private(path: Path) -> int:
    """A descriptor of the folder `path`, created (mode 700) where missing: a real folder, not a link,
    owned by this user and writable by no one else; raises Untrusted otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(path):        # ENOTDIR or ELOOP, by the kernel's order of checks
            raise Untrusted(f"{path}: a link, not a folder") from None
        if e.errno == errno.ENOTDIR:
            raise Untrusted(f"{path}: not a folder") from None
        raise Untrusted(f"{path}: {e.strerror or e}") from None
    st = os.fstat(fd)
    why = not_ours(path, st)
    if why is not None:
        os.close(fd)
        raise Untrusted(why)
    if created:
        os.fchmod(fd, 0o700)        # what the umask took away, nothing more
    return fd


def open_own_file(folder: int, name: str, shown: Path) -> int:
    """A read-only descriptor of the regular file `name` in the folder open as `folder`, owned by this
    user and writable by no one else (core/own_files.py's check); raises Untrusted (naming it as
    `shown`) otherwise, and FileNotFoundError where it is missing."""
    try:
        fd = open_own(name, folder, shown)
    except NotOurs as e:
        raise Untrusted(str(e)) from None
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(shown))
    return fd


def read_small(fd: int, limit: int, shown: Path) -> bytes:
    """The whole of the open file `fd`, refused (Untrusted) where it holds more than `limit` bytes."""
    data = os.pread(fd, limit + 1, 0)
    if len(data) > limit:
        raise Untrusted(f"{shown}: more than {limit} bytes")
    return data


def sha256_of(fd: int) -> str:
    """The SHA-256 of the open file `fd`, read from the descriptor itself (not its path)."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def new_file(folder: int, prefix: str) -> str:
    """The name of a new, empty file (mode 600) in the folder open as `folder`, made for this call."""
    name = f"{prefix}{secrets.token_hex(8)}.part"
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=folder))
    return name


def write_atomically(folder: int, name: str, data: bytes) -> None:
    """`data` as the file `name` in the folder open as `folder` (mode 600): written whole to a file of
    its own, then renamed over whatever had the name, so a reader sees the old file or the new one."""
    tmp = new_file(folder, name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        remove(folder, tmp)


def remove(folder: int, name: str) -> None:
    """The entry `name` of the folder open as `folder` removed where it is there (a link, not its target)."""
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass


def path_through(folder: int, name: str) -> str:
    """A path to `name` in the folder open as `folder` that another program (a compiler) can write to,
    reaching the folder through this process's descriptor rather than by its name."""
    return f"/proc/{os.getpid()}/fd/{folder}/{name}"
