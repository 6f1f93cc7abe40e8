"""mimalloc, where the process runs on it (edge_sel/allocator.py preloads it for budgeted commands):
its version and purge delay read, and its freed pages handed back between a run's phases."""

from __future__ import annotations

import contextlib
import ctypes

PURGE_DELAY_OPTION = 15      # mi_option_purge_delay in mimalloc's mi_option_t (mimalloc.h)
MIN_VERSION = 20100
_lib: list = []


def library():
    """The loaded mimalloc's functions (the process's own symbols: a preloaded mimalloc is among
    them), or None where the process runs on another allocator."""
    if not _lib:
        try:
            lib = ctypes.CDLL(None)
            lib.mi_option_get.restype = ctypes.c_long
            lib.mi_option_get.argtypes = [ctypes.c_int]
            lib.mi_option_set.argtypes = [ctypes.c_int, ctypes.c_long]
            lib.mi_collect.argtypes = [ctypes.c_bool]
            lib.mi_version.restype = ctypes.c_int
            # the option's number holds from mimalloc 2.1 (older releases numbered them otherwise)
            _lib.append(lib if lib.mi_version() >= MIN_VERSION else None)
        except (OSError, AttributeError):
            _lib.append(None)
    return _lib[0]


def loaded() -> bool:
    return library() is not None


def version() -> str | None:
    lib = library()
    if lib is None:
        return None
    v = lib.mi_version()
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def purge_delay_ms() -> int | None:
    lib = library()
    return None if lib is None else int(lib.mi_option_get(PURGE_DELAY_OPTION))


def hand_back() -> bool:
    """Every freed page handed back to the system now (pages freed later go back after the purge
    delay: while training the one the process started with, as set to 0 and back while running,
    training measured 11.8 s where it kept 100 ms throughout, 8.7; while a budgeted run evaluates,
    EVALUATION_PURGE_DELAY_MS). Returns False where the process is not on mimalloc."""
    lib = library()
    if lib is None:
        return False
    lib.mi_collect(True)
    return True


# While a budgeted run evaluates. Lite0 at 96 px, its norms and classifier under 1/4 of full FT's peak
# (123.9 MiB), 500 images, evaluating 64 + 64 in batches of 16, one Intel core: at the 1 s delay
# evaluation measured 129.8-130.4 MiB; at 100 ms, 118.9; at 10 ms, 113.5-114.4 at the same joules
# (144-158 J); at 0, 105.2-108.4 at 164-168 J (a page faulted in afresh for every block).
EVALUATION_PURGE_DELAY_MS = 10


@contextlib.contextmanager
def evaluation_purge_delay():
    """Inside, freed pages go back to the system EVALUATION_PURGE_DELAY_MS after they were freed; the
    delay as it was afterwards. An evaluation's batches free blocks of other sizes than the step's,
    which the step's longer delay keeps. Does nothing where the process is not on mimalloc."""
    lib = library()
    if lib is None:
        yield
        return
    delay = lib.mi_option_get(PURGE_DELAY_OPTION)
    lib.mi_option_set(PURGE_DELAY_OPTION, EVALUATION_PURGE_DELAY_MS)
    try:
        yield
    finally:
        lib.mi_option_set(PURGE_DELAY_OPTION, delay)
