"""Measured peak memory of a window of the run, by a method independent of the count (core/memory.py).

- `cuda-allocated`: torch.cuda.reset_peak_memory_stats at the window's start, then
  max_memory_allocated over memory_allocated then: the bytes of tensors the caching allocator handed
  out on the training device. Not in it: the allocator's reserved but unused cache, the CUDA
  context, and what cuDNN or cuBLAS allocate outside torch's allocator.
- `rss-hwm`: on Linux the process's resident high-water mark, reset to the current resident size by
  writing 5 to /proc/self/clear_refs, read as VmHWM from /proc/self/status, over VmRSS at the
  window's start. In it: every page the process touched in the window (tensors, oneDNN's buffers,
  the allocator's own overhead, code and libraries loaded in the window). Not in it: pages the
  allocator kept from before the window (they are in the start's level); a run hands glibc's free
  pages back before it takes its level (engine/loop/memory_records.py), else a run after other work
  in the same process measured 0.5 MiB of growth for a 10.9 MiB counted step.
- `rss-hwm-lifetime`: where clear_refs cannot be written, VmHWM is the process's high-water mark
  since it started: its growth over the window's start is an upper bound of the window's.
- `unavailable`: no /proc (macOS, Windows): no figure.

A window's peak may be measured over a level taken earlier (the run's, just before training).
Windows may nest (an evaluation inside an epoch's training window): the high-water mark is folded
into every open window before it is reset, so an outer window keeps its inner ones' peaks.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from edge_sel import device_caps
from edge_sel.engine.machine import cpu_pool

MiB = 2 ** 20
CLEAR_REFS = "/proc/self/clear_refs"
METHODS = ("cuda-allocated", "rss-hwm", "rss-hwm-lifetime", "unavailable")


@dataclass(eq=False)
class Window:
    start: int          # bytes at the window's start
    high: int           # the highest bytes seen in it so far


def proc_status_bytes(field: str, status: str | None = None) -> int | None:
    """A `VmRSS:`/`VmHWM:` line of /proc/self/status in bytes (None where there is none)."""
    try:
        with open(status or device_caps.PROC_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakMeter:
    """Measured peaks of windows on `device`; `cuda` and the /proc paths are injectable (tests)."""

    def __init__(self, device, cuda=None, clear_refs: str = CLEAR_REFS, status: str | None = None):
        self.device = torch.device(device)
        self.cuda = cuda or torch.cuda
        self.clear_refs, self.status = clear_refs, status
        self.open: list[Window] = []
        self.highest = 0        # the highest level seen by any window, or before the first (bytes)
        if self.device.type == "cuda":
            self.method = "cuda-allocated"
        elif proc_status_bytes("VmHWM", status) is None:
            self.method = "unavailable"
        else:
            self.method = "rss-hwm"
            self.highest = self._high()       # the process's high-water mark so far (data loading included)
            if not self._reset():
                self.method = "rss-hwm-lifetime"

    def _reset(self) -> bool:
        if self.method == "cuda-allocated":
            self.cuda.reset_peak_memory_stats(self.device)
            return True
        try:
            with open(self.clear_refs, "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def level(self) -> int | None:
        """Bytes now: resident (CPU) or allocated (CUDA); None where nothing is measured."""
        return None if self.method == "unavailable" else self._now()

    def _now(self) -> int:
        if self.method == "cuda-allocated":
            return self.cuda.memory_allocated(self.device)
        return proc_status_bytes("VmRSS", self.status) or 0

    def _high(self) -> int:
        if self.method == "cuda-allocated":
            return self.cuda.max_memory_allocated(self.device)
        return proc_status_bytes("VmHWM", self.status) or 0

    def _fold(self) -> None:
        high = self._high()
        self.highest = max(self.highest, high)
        for w in self.open:
            w.high = max(w.high, high)

    def begin(self, start: int | None = None) -> Window | None:
        """A window whose peak is measured over `start` bytes (default: the level now)."""
        if self.method == "unavailable":
            return None
        self._fold()
        if self.method != "rss-hwm-lifetime":
            self._reset()
        now = self._now()
        window = Window(now if start is None else start, now)
        self.open.append(window)
        return window

    def process_peak(self) -> float | None:
        """MiB: the highest resident level of the process measured so far, from its start (rss-hwm:
        over every window, and before the first); on CUDA the most bytes allocated on the device."""
        if self.method == "unavailable":
            return None
        self._fold()
        return round(self.highest / MiB, 3)

    def end(self, window: Window | None) -> float | None:
        """The window's peak over its start, in MiB (None: not measured here)."""
        if window is None or window not in self.open:
            return None
        self._fold()
        self.open.remove(window)
        return round(max(0, window.high - window.start) / MiB, 3)


PAGE_BYTES = 4096


def fault_in(tensors) -> None:
    """Every page of each contiguous CPU tensor read once. Images mapped from the decoded-image cache
    (data/folder.py: only what a run reads becomes resident) are then resident before training, like
    the rest of the data, instead of in the first window that reads them: a full 10,000-image test set
    read by the start's evaluation put 30 MiB of file pages into every measured peak after it."""
    for t in tensors:
        if t.device.type == "cpu" and t.numel() and t.is_contiguous():
            t.view(-1)[::max(1, PAGE_BYTES // t.element_size())].sum()


# glibc's mallopt parameters: the size from which blocks are mmapped (and unmapped when freed), and
# the free top of the heap above which it is handed back.
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
MMAP_THRESHOLD = 64 * 1024
TRIM_THRESHOLD = 128 * 1024         # glibc's own
# While training with room to spare: blocks up to glibc's own ceiling for its dynamic threshold come
# from the heap, and its top is kept, so a step reuses the pages the step before freed.
TRAINING_MMAP_THRESHOLD = 32 * 2 ** 20
TRAINING_TRIM_THRESHOLD = 64 * 2 ** 20
# How far above a step's count glibc's heap measures: up to 1.9x in docs/memory.md's per-step table
# (edgecnn in micro-batches of 4: +90%; recomputing half the blocks: up to +88%), 2.07x for digits'
# edgecnn in micro-batches with every block recomputed (2.0 let that run measure 0.4 MiB over its
# budget), 2.4x for mobilenetv2 with 5 blocks recomputed (docs/memory-budget.md).
HEAP_SLACK = 2.5
# The share of the budget's room beside the count and the process's growth (at least the plan's 20%
# reserve) that the pool of freed blocks may hold above the most asked of it at once (cpu_pool.py).
# Its resident size measured more above unmapping's than that (Lite0 at 96 px under 49.6 MiB, 11.8 MiB
# of room: 4 MiB of slack measured 45.2-46.3 MiB of training against 37.9-38.6 unmapped), so it takes a
# third and leaves the rest of the reserve to what it was held back for.
POOL_SHARE_OF_ROOM = 1 / 3


@functools.cache          # finding the library reads the loader's cache: 1.9 ms a call, once per shape timed
def _libc():
    import ctypes
    import ctypes.util
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def set_mmap_threshold(size: int, trim: int | None = None) -> bool:
    """glibc's mmap threshold set to `size` bytes (which also turns its dynamic adjustment off), and
    its trim threshold to `trim`. Returns whether it was set (False on another C library)."""
    libc = _libc()
    try:
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, size))
        return done and (trim is None or bool(libc.mallopt(M_TRIM_THRESHOLD, trim)))
    except AttributeError:
        return False


def allocator_for_budget() -> bool:
    """Before a budgeted run plans (and probes gains): blocks of 64 KiB and more go back to the system
    when freed, so what planning and the gain probe allocated is not kept for the run (under glibc's own
    threshold the probe's freed blocks stayed in the heap: a 200 MiB plan measured 222 MiB training,
    294 evaluating). Returns whether it was set (False on another C library)."""
    return set_mmap_threshold(MMAP_THRESHOLD)


def heap_fits(counted_mb: float, budget_mb: float) -> bool:
    """Whether a step counted `counted_mb` fits `budget_mb` with glibc's heap kept while training."""
    return counted_mb * HEAP_SLACK <= budget_mb


def release_free_heap() -> bool:
    """The allocator's free pages handed back to the system (the pool's, glibc's malloc_trim); False on
    another C library."""
    cpu_pool.empty()
    libc = _libc()
    try:
        libc.malloc_trim(0)
    except AttributeError:
        return False
    return True


def allocator_for_training(keep_heap: bool, pool: int = 0) -> bool:
    """Once planned; `pool`: the budget's room beside the count and the process's growth, in bytes.
    With `keep_heap` (the budget holds the count with the heap's slack), what planning freed goes back
    to the system (malloc_trim) and the heap then serves blocks up to 32 MiB and keeps up to `pool`
    bytes free at its top (0: 64 MiB): steps reuse the pages the step before freed and run as fast as
    without a budget. Else blocks of 64 KiB and more stay mapped on their own, so the resident size
    follows the count, and the pages of torch's freed blocks of that size are kept, to be cut into later
    blocks, in a pool that may reach a share of `pool` above the most asked of it at once (cpu_pool.py,
    POOL_SHARE_OF_ROOM); without the pool every step faults their
    pages in afresh: mobilenetv2 at 32 px, batch 32, the whole step (222.0 MiB counted) trained in 11.5
    s against 4.1 with the heap, and measured 255 MiB against 313-327 (benchmarks/bench_budget_time.py).
    A heap bounded only by its free top, where the count does not fit HEAP_SLACK times, measured over
    its budget (digits' edgecnn under 40 MiB: 42.0 MiB; unmapped 36.9), as fragmentation inside it
    cannot be bounded; the pool's blocks are each mapped on their own. Returns whether the heap or the
    pool keeps freed memory (allocator_after_training then undoes it)."""
    if not keep_heap:
        return cpu_pool.keep(int(pool * POOL_SHARE_OF_ROOM))
    trim = max(pool, TRIM_THRESHOLD) if pool else TRAINING_TRIM_THRESHOLD
    return release_free_heap() and set_mmap_threshold(TRAINING_MMAP_THRESHOLD, trim)


def allocator_after_training() -> bool:
    """After a run that kept the heap: what it keeps goes back to the system and the process returns
    to the setting budgeted runs plan under (a later unbudgeted run in the same process measured
    0.0 MiB of training growth in pages the heap had kept)."""
    cpu_pool.keep(None)
    return release_free_heap() and set_mmap_threshold(MMAP_THRESHOLD, TRIM_THRESHOLD)


def between_phases() -> None:
    """Before a window of training or evaluation opens: the blocks the pool kept go back (cpu_pool.py;
    blocks of another phase's sizes do not reuse them). glibc's heap is left as the plan set it."""
    cpu_pool.empty()


@contextlib.contextmanager
def evaluating(budgeted: bool):
    """The allocator while a pass evaluates under a budget: the pool keeps freed pages with no slack
    (with the training's, evaluations measured the higher peaks: mobilenetv2 at 32 px under 40 MiB with 3.8 MiB of slack, 36.1-37.1 MiB against
    training's 31.9-33.0). Cut from its free ranges, an evaluation's blocks still come from the pool: 0
    misses in 12 batches of mobilenetv2 where blocks served only their own size missed 612 times (11,000
    faults a batch). Both as they were afterwards."""
    pooled = budgeted and bool(cpu_pool.slack_bytes())
    with cpu_pool.slack_while(0) if pooled else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def pooled_while_timing():
    """While the planner times a budgeted run's steps on glibc: freed blocks pooled with no slack, as
    the run's steps will run (a step of Lite0's norms in micro-batches of one image at 96 px: 1.07-1.37
    s unmapped, 0.72-0.74 s pooled); the pool as it was after, its blocks back to the system. Untouched
    where the pool is not loaded (no budget)."""
    pooled = cpu_pool.loaded()
    with cpu_pool.slack_while(0) if pooled else contextlib.nullcontext():
        yield


def allocator_name() -> str:
    """The allocator a CPU run's memory is measured under, for its record."""
    return "glibc" if _libc() is not None else "unknown"


def allocator_record() -> str:
    """The allocator a CPU run's pages come from, for its records: the pool of freed blocks named
    where it keeps them (the measured peaks depend on both)."""
    slack = cpu_pool.slack_bytes()
    pooled = "" if slack is None else (f", freed blocks of 64 KiB and more pooled ({slack / MiB:.1f} MiB of slack "
                                       "while training, none while evaluating)")
    return allocator_name() + pooled


def training_note(keep_heap: bool, room_mb: float) -> str:
    """What the allocator does with freed memory while a budgeted CPU run trains, for its plan's lines."""
    if keep_heap:
        return (f"glibc's heap kept while training, at most {room_mb:.1f} MiB free at its top (the count fits the "
                f"budget {HEAP_SLACK:g} times over)")
    if cpu_pool.library() is not None:
        return (f"freed blocks of 64 KiB and more pooled and cut into later blocks, at most "
                f"{room_mb * POOL_SHARE_OF_ROOM:.1f} MiB above the most asked at once while training, none while "
                f"evaluating")
    return (f"freed blocks of 64 KiB and more go back to the system, so the resident size follows the count "
            f"(slower steps; no pool of freed blocks: {cpu_pool.unavailable()})")
