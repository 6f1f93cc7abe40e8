"""mimalloc under budgeted runs, chosen before torch loads.

Under a memory budget glibc's heap cannot keep what a step frees: blocks of 64 KiB and more are
unmapped when freed (engine/machine/peak_memory.py), or the heap fragments past the budget (Lite0 at
96 px, the norms in micro-batches of one image under 49.6 MiB: 50.1-52.1 MiB measured with every block
kept on the heap). Every step then faults its pages in afresh: 9.2 million minor faults and 13.5 s of
training where the same set unbudgeted takes 5.0 s. On glibc a pool of torch's freed blocks, bounded
by the budget, now wins most of that back (engine/machine/cpu_pool.py). mimalloc (Microsoft's allocator, packaged as the
`cmeel-mimalloc` wheel) segregates blocks by size, so a freed block is reused by the next of its size,
and hands pages back to the system a set delay after they were freed (measured in
docs/memory-budget.md, "mimalloc under a budget").

An allocator replaces glibc's only from a process's start (the dynamic loader's LD_PRELOAD), so with
EDGE_SEL_ALLOCATOR=mimalloc the console command of a budgeted fine-tune (`finetune --memory-budget`)
starts itself once more with it, before torch or anything else that allocates has loaded, and the
benches start their budgeted rows' processes with it (bench/bench_run.py), their unbudgeted rows on
glibc's, as the command line runs them; a path names another build of mimalloc. A process that already
preloads a library (the user's LD_PRELOAD) is left as it is. mimalloc's pages pin more of the process
than glibc's heap (mobilenetv2 at 32 px, after training steps of 2, 5 and 32 images and every freed
page handed back: 45 MiB over the level before them, glibc's 32), so a budget that holds only glibc's
growth is refused on it: that refusal starts the run once more on glibc's (engine/loop/started_again.py,
cli_start_again.py, bench/bench_run.py). It is not the default: how much it pins varies from run to run
(two runs of one plan of Lite0 at 96 px under a 49.6 MiB budget, the same growth before their first
step, measured 41.7 and 49.5 MiB of training, and the second 50.5 of evaluation, over the budget)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

VARIABLE = "EDGE_SEL_ALLOCATOR"
GLIBC = "glibc"
MIMALLOC = "mimalloc"
DISTRIBUTION = "cmeel-mimalloc"
# Pages freed this long ago go back to the system: mimalloc's own default. Lite0 at 96 px, 340 images,
# one epoch on one core: under 1/10 of full FT's peak, 100 ms and 1,000 trained as fast (9.1 and 8.9 s)
# and measured as much (38.3 and 38.6 MiB); unbudgeted full FT took 14.6-15.9 s at 1,000 against glibc's
# 14.4-15.9, and 16.8-19.4 s at 100 (steps of whole batches free large blocks for longer than 100 ms).
PURGE_DELAY_MS = 1000
PURGE_DELAY = "MIMALLOC_PURGE_DELAY"
# Its arenas committed as they are used, not ahead: committed ahead, a process measured 15 MiB more
# resident than glibc's before torch loaded and 23-29 MiB more with Lite0 built; committed as used, 0.9
# and 2.3 MiB more.
EAGER_COMMIT = "MIMALLOC_ARENA_EAGER_COMMIT"
# Set in the environment of the start made with mimalloc: that start never starts again, and a loader
# that could not preload the library leaves it running on glibc's rather than in a loop.
STARTED_WITH = "EDGE_SEL_STARTED_WITH_ALLOCATOR"


def library(environ=None) -> Path | None:
    """mimalloc's shared library where EDGE_SEL_ALLOCATOR asks for it: `mimalloc`, the
    `cmeel-mimalloc` distribution's (the `alloc` extra), or a path; None where it is not asked for
    (unset or `glibc`), not installed, or not Linux."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(VARIABLE, "").strip()
    if chosen in ("", GLIBC) or not sys.platform.startswith("linux"):
        return None
    if chosen != MIMALLOC:
        return Path(chosen)
    from importlib import metadata
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libmimalloc.so."):
            path = Path(file.locate())
            if path.is_file():
                return path
    return None


def wanted(args: list[str]) -> bool:
    """Whether a command line (the arguments after `edge-sel`) is a budgeted fine-tune."""
    words = [a for a in args if not a.startswith("-")]
    return (words[:1] == ["finetune"]
            and any(a == "--memory-budget" or a.startswith("--memory-budget=") for a in args))


def preload(environ) -> Path | None:
    """Sets `environ` so that a process started with it runs on mimalloc (and never starts again);
    returns the library, or None (`environ` left as it is) where it is turned off, not found, or
    something is preloaded already."""
    if STARTED_WITH in environ or environ.get("LD_PRELOAD", "").strip():
        return None
    path = library(environ)
    if path is None:
        return None
    environ[STARTED_WITH] = environ["LD_PRELOAD"] = str(path)
    environ.setdefault(PURGE_DELAY, str(PURGE_DELAY_MS))
    environ.setdefault(EAGER_COMMIT, "0")
    return path


@contextlib.contextmanager
def preloaded_children(budgeted: bool):
    """Processes started inside run on mimalloc where `budgeted` (a bench's budgeted row); this
    process's environment is as it was afterwards."""
    before = dict(os.environ)
    try:
        if budgeted:
            preload(os.environ)
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)


def runs_on_ours(environ=None) -> bool:
    """Whether this process was started on the mimalloc preload() set (not a library the user preloads)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get(STARTED_WITH)) and environ.get("LD_PRELOAD") == environ[STARTED_WITH]


def on_glibc_instead(environ) -> bool:
    """Sets `environ` so that a process started with it runs on glibc's allocator, where it runs on the
    mimalloc preload() set; returns whether it did (else `environ` is left as it is)."""
    if not runs_on_ours(environ):
        return False
    del environ["LD_PRELOAD"], environ[STARTED_WITH]
    environ[VARIABLE] = GLIBC
    return True


def console_command(argv: list[str]) -> bool:
    """Whether this process is the `edge-sel` command itself (the console script or `python -m
    edge_sel`), not another program (a test runner) that imported the command line."""
    first = Path(argv[0]) if argv else Path()
    return first.name == "edge-sel" or (first.name == "__main__.py" and first.parent.name == "edge_sel")


def start_with_mimalloc(argv=None, environ=None, execv=os.execv) -> None:
    """Replaces the console command's process by the same command line with mimalloc preloaded, where
    a budgeted command runs, the library is found, and nothing is preloaded yet; else returns and the
    process runs on as it is. Call before torch is imported."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if not (console_command(argv) and wanted(argv[1:])) or preload(environ) is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

