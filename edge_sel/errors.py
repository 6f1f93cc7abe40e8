"""Errors a user can fix. The CLI prints them as one line and exits 2 (bad input) or 1 (a write
that failed), without a traceback."""

import contextlib


class InputError(Exception):
    """Bad usage or bad input: a missing file, a wrong option value, a mismatched checkpoint.

    The message names the file or option at fault and what is wrong with it.
    """


class WriteError(Exception):
    """Writing a run's output failed (a full disk, an unwritable directory). The CLI prints one line
    and exits 1; what was written before stays intact."""


@contextlib.contextmanager
def writing(path):
    """Turn an OSError while writing `path` into a WriteError that names the file."""
    try:
        yield
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror or e})") from None
