"""Errors a user can fix, and a run that failed. The CLI prints them as one line and exits 2 (bad
input) or 1 (a write that failed, a run that diverged), without a traceback."""

import contextlib
from pathlib import Path


class InputError(Exception):
    """Bad usage or bad input: a missing file, a wrong option value, a mismatched checkpoint.

    The message names the file or option at fault and what is wrong with it.
    """


class WriteError(Exception):
    """Writing a run's output failed (a full disk, an unwritable directory). The CLI prints one line
    and exits 1; what was written before stays intact."""


class TrainingDiverged(Exception):
    """Non-finite losses kept coming back after rolling back and halving the learning rate."""


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
    (`kind`: what the directory should have been, e.g. "run directory")."""
    path = Path(directory) / name
    if not path.is_file():
        raise InputError(f"{label} {directory}: {name} is missing" + (f" (not an edge-sel {kind})" if kind else ""))
    return path


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
