"""Crash-safe full-state checkpoints: atomic, checksummed, with the previous good one kept.

Layout in a run directory:
    state/current.pt    the newest complete checkpoint
    state/previous.pt   the one before it, kept until a newer one is complete

A write goes to a temporary file, is fsynced, then renamed over `current.pt` after the old
`current.pt` became `previous.pt`; the directory is fsynced so the renames survive power loss.
Each file starts with a magic line and the SHA-256 of its payload, so a torn or corrupt file is
recognised and loading falls back to the previous checkpoint with a warning.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from edge_sel.core.checkpoint import fsync_dir
from edge_sel.core.temp_file import open_new
from edge_sel.errors import WriteError

MAGIC = b"edge-sel-state/1\n"
CURRENT, PREVIOUS = "current.pt", "previous.pt"


class StateWriteError(WriteError):
    """Writing a checkpoint failed (a full disk, an unwritable directory); the last good one is intact."""


class NoValidState(Exception):
    """No readable checkpoint in a run directory."""


def plain(obj):
    """Tensors, numbers, strings and containers only, so that loading needs no pickled code
    (torch.load with weights_only=True): numpy arrays become tensors, numpy scalars numbers."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def encode(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(plain(state), buf)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


class _Hashed:
    """A file that hashes what is written to it: torch.save streams each record through `write`, so
    the payload is never held whole in memory (built in bytes first, a save kept three copies of the
    state: the buffer, its value and the file's blob)."""

    def __init__(self, f):
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        self.sha.update(data)
        try:
            return self.f.write(data)
        except OSError as e:    # torch.save reports a failed write as a RuntimeError: kept to raise as it was
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _write_streamed(f, state: dict) -> None:
    """MAGIC, the payload's SHA-256 and the payload, as encode() lays them out: the hash's place is
    written last, once the payload has streamed past it."""
    f.write(MAGIC)
    at = f.tell()
    f.write(b"0" * 64 + b"\n")
    hashed = _Hashed(f)
    try:
        torch.save(plain(state), hashed)
    except RuntimeError:
        if hashed.error is not None:        # a full disk or an I/O error: the caller's one-line message
            raise hashed.error from None
        raise
    pause = float(os.environ.get("EDGE_SEL_FAULT_SLOW_STATE_WRITE", "0") or 0)
    if pause:   # fault injection for crash tests: a window in which the file is not complete
        f.flush()
        print("edge-sel: state write in progress", file=__import__("sys").stderr, flush=True)
        time.sleep(pause)
    f.seek(at)
    f.write(hashed.sha.hexdigest().encode())


def decode(blob: bytes) -> dict:
    if not blob.startswith(MAGIC):
        raise ValueError("not an edge-sel state file")
    head, _, payload = blob[len(MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != head:
        raise ValueError("checksum mismatch (torn or corrupt file)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:    # a file that asks to run code is not a state we wrote
        raise ValueError(f"holds objects other than tensors and plain values ({str(e).splitlines()[0][:80]})") \
            from None


def save_state(directory: Path, state: dict) -> Path:
    directory = Path(directory)
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        f, tmp = open_new(directory / CURRENT, prefix=".state.tmp")     # never through a name planted there
        with f:
            _write_streamed(f, state)
            f.flush()
            os.fsync(f.fileno())
        current = directory / CURRENT
        if current.exists():
            os.replace(current, directory / PREVIOUS)
        os.replace(tmp, current)
        tmp = None
        fsync_dir(directory)
    except OSError as e:
        try:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass
        kept = [name for name in (CURRENT, PREVIOUS) if (directory / name).is_file()]
        raise StateWriteError(f"{directory}: cannot write checkpoint ({e.strerror or e}); "
                              + (f"the last good checkpoint is intact ({kept[0]})" if kept
                                 else "no earlier checkpoint of this run exists")) from None
    return current


def load_state(directory: Path) -> dict:
    """The newest valid checkpoint; a corrupt newest one falls back to the previous with a warning."""
    directory = Path(directory)
    problems = []
    for name in (CURRENT, PREVIOUS):
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        try:
            state = decode(path.read_bytes())
        except (OSError, ValueError, RuntimeError, EOFError) as e:
            problems.append(f"{name}: {e}")
            continue
        if name == PREVIOUS and problems:
            warnings.warn(f"{directory / CURRENT} is unusable ({problems[0]}); resuming from {path}")
        return state
    raise NoValidState(f"{directory}: no valid checkpoint ({'; '.join(problems)})")
