"""Errors a user can fix, and a run that failed. The CLI prints them as one line and exits 2 (bad
input) or 1 (a write that failed, a run that diverged), without a traceback."""

import contextlib
import errno
import json
import os
import stat
from pathlib import Path


class InputError(Exception):
    """Bad usage or bad input: a missing file, a wrong option value, a mismatched checkpoint.

    The message names the file or option at fault and what is wrong with it.
    """


class InUseError(InputError):
    """Another edge-sel process is writing the output or run named: nothing is wrong with it, and
    it is never set aside or replaced for that."""


class WriteError(Exception):
    """Writing a run's output failed (a full disk, an unwritable directory). The CLI prints one line
    and exits 1; what was written before stays intact."""


class TrainingDiverged(Exception):
    """Non-finite losses kept coming back after rolling back and halving the learning rate."""


class RunKilled(Exception):
    """A fine-tune a bench ran in a process of its own ended without an answer (killed: out of memory,
    or a signal). The CLI prints one line naming its run directory and exits 1."""


class MeasuringFailed(Exception):
    """A child process the run started to measure (engine/loop/measure_child.py) failed: the run stops
    in one line (exit 1) rather than measure in its own process after something unexpected ran."""


@contextlib.contextmanager
def writing(path):
    """Turn an OSError while writing `path` into a WriteError that names the file."""
    try:
        yield
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None


def existing_dir(path, label: str) -> Path:
    """`path` as a Path; an InputError naming `label` (the option or argument given) when it is not
    a directory."""
    path = Path(path)
    if path.is_file():
        raise InputError(f"{label} {path}: is a file, not a directory; give its directory "
                         f"({path.parent if str(path.parent) != '' else '.'})")
    if not path.is_dir():
        raise InputError(f"{label} {path}: no such directory")
    return path


def required_file(directory: Path, name: str, label: str, kind: str | None = None) -> Path:
    """`directory/name`; an InputError naming `label` and the missing file when it is not there
    (`kind`: what the directory should have been, e.g. "run directory") or not a regular file; a
    link under that name is refused as one (inside_file)."""
    if not inside_file(directory, name, label):
        raise InputError(f"{label} {directory}: {name} is missing" + (f" (not an edge-sel {kind})" if kind else ""))
    return Path(directory) / name


# -- Files of a directory the device received (a checkpoint, a run, a deployed version): each is
# opened once, by its name inside that directory, without following a link (O_NOFOLLOW against the
# directory's own descriptor), and read or copied from that descriptor: a link to a file elsewhere,
# however it got there, is refused, and no check-then-open gap lets one be swapped in. The directory
# itself is the one the user named and is followed (the deployed path is a link to its version).
# A hard link is a name of the file itself, inside the directory, not a path out of it: it can only be
# made on this device by someone who can already read the file, and a copy or an unpacked archive
# from elsewhere holds none to files outside it; refusing them would refuse backups made with
# `cp -al` or `rsync --link-dest`. So they are read like any file (docs/threat-model.md).

def _refuse_link(path: Path, label: str) -> None:
    where = f"{label} {path}" if label else str(path)
    raise InputError(f"{where}: a link; edge-sel follows no link inside a directory it received")


def open_inside(directory, name: str, label: str) -> int | None:
    """A read-only descriptor of the regular file `name` in `directory`, or None when there is none;
    an InputError naming `label` for a link, an OSError for anything else but a regular file. The
    caller closes it."""
    path = Path(directory) / name
    try:
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            _refuse_link(path, label)
        raise
    finally:
        os.close(folder)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):          # a directory or a device: unreadable as a file, as open() says
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def inside_file(directory, name: str, label: str) -> bool:
    """True when `directory/name` is a regular file, False when it is not (nothing, a directory, a
    device); an InputError naming `label` for a link, to anything, inside or out."""
    try:
        mode = os.lstat(Path(directory) / name).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISLNK(mode):
        _refuse_link(Path(directory) / name, label)
    return stat.S_ISREG(mode)


def read_inside(directory, name: str, label: str, limit: int | None = None) -> bytes | None:
    """The bytes of `directory/name` (opened as open_inside does), or None when it is missing; with
    `limit`, a file larger than that many bytes is refused before it is read."""
    fd = open_inside(directory, name, label)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise InputError(f"{label} {Path(directory) / name}: {size:,} bytes, more than the {limit:,} "
                             f"such a file may hold")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


JSON_LIMIT = 64 << 20       # bytes: a model card naming a million classes holds under 20 MiB


def parse_json(data: bytes | str):
    """json.loads, with nesting too deep for the parser (a RecursionError, and a traceback where
    nothing caught it) raised as the JSONDecodeError, a ValueError, that every reader already turns
    into one line."""
    try:
        return json.loads(data)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None


def read_json(path):
    """The JSON value in the file `path`, read as read_inside reads a file of its directory (no
    link: InputError). OSError when it cannot be read (FileNotFoundError: missing); ValueError when
    it is larger than JSON_LIMIT, not UTF-8 JSON or nested too deeply."""
    path = Path(path)
    fd = open_inside(path.parent, path.name, "")
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > JSON_LIMIT:
            raise ValueError(f"{size:,} bytes, more than the {JSON_LIMIT:,} a JSON file edge-sel reads may hold")
        return parse_json(f.read())


def read_json_inside(directory, name: str, label: str):
    """The JSON value in `directory/name`, read as read_inside does (no link, at most JSON_LIMIT
    bytes), or None when the file is missing; unreadable or malformed JSON is an InputError."""
    data = read_inside(directory, name, label, JSON_LIMIT)
    if data is None:
        return None
    try:
        return parse_json(data)
    except ValueError as e:             # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{Path(directory) / name}: unreadable ({e.__class__.__name__}: {e})") from None


def named_inside(directory, name, label: str) -> Path:
    """`directory/name` for a file name that a received file gives (a manifest, conditions.json): a
    string naming a path inside `directory`, neither absolute, nor out of it by `..`, nor by a link
    that leads out; else an InputError naming `label`."""
    if not isinstance(name, str) or not name:
        raise InputError(f"{label}: expected the name of a file in {directory}, got {name!r}")
    path = Path(directory) / name
    try:
        outside = Path(name).is_absolute() or not path.resolve().is_relative_to(Path(directory).resolve())
    except (OSError, RuntimeError, ValueError):      # a link loop, a NUL byte
        outside = True
    if outside:
        raise InputError(f"{label}: {name!r} lies outside {directory}; edge-sel follows no path out of a "
                         f"directory it received")
    return path
