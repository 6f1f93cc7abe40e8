"""mimalloc under budgeted runs, chosen before torch loads.

Under a memory budget glibc's heap cannot keep what a step frees: blocks of 64 KiB and more are
unmapped when freed (engine/machine/peak_memory.py), or the heap fragments past the budget (Lite0 at
96 px, the norms in micro-batches of one image under 49.6 MiB: 50.1-52.1 MiB measured with every block
kept on the heap). Every step then faults its pages in afresh: 9.2 million minor faults and 13.5 s of
training where the same set unbudgeted takes 5.0 s. mimalloc (Microsoft's allocator, packaged as the
`cmeel-mimalloc` wheel, the `alloc` extra) segregates blocks by size, so a freed block is reused by the
next of its size, and hands pages back to the system a set delay after they were freed: a step reuses
what the step before freed, and pages unused for longer go back (measured in docs/memory-budget.md).

An allocator replaces glibc's only from a process's start (the dynamic loader's LD_PRELOAD), so the
console command of a budgeted run starts itself once more with it, before torch or anything else that
allocates has loaded: `finetune --memory-budget`, `bench transfer` and `bench memory` (their rows run
under budgets). EDGE_SEL_ALLOCATOR=glibc keeps glibc's; a path names another build of mimalloc. A
process that already preloads a library (the user's LD_PRELOAD) is left as it is."""

from __future__ import annotations

import os
import sys
from pathlib import Path

VARIABLE = "EDGE_SEL_ALLOCATOR"
GLIBC = "glibc"
DISTRIBUTION = "cmeel-mimalloc"
# Pages freed this long ago go back to the system (mimalloc's own default is 1,000 ms). Long enough for
# a step to reuse what the step before freed (a micro-batch of one image: about 25 ms), short enough
# that what evaluation or planning freed is gone before training's peak is measured.
PURGE_DELAY_MS = 100
PURGE_DELAY = "MIMALLOC_PURGE_DELAY"
# Its arenas committed as they are used, not ahead: committed ahead, a process measured 15 MiB more
# resident before torch loaded and 27 MiB more with Lite0 built (glibc's: 11.0 and 244.1 MiB; mimalloc's
# committed as used: 11.9 and 246.5).
EAGER_COMMIT = "MIMALLOC_ARENA_EAGER_COMMIT"
# Set in the environment of the start made with mimalloc: that start never starts again, and a loader
# that could not preload the library leaves it running on glibc's rather than in a loop.
STARTED_WITH = "EDGE_SEL_STARTED_WITH_ALLOCATOR"


def library(environ=None) -> Path | None:
    """mimalloc's shared library: the path EDGE_SEL_ALLOCATOR names, else the `cmeel-mimalloc`
    distribution's; None where it is turned off (`glibc`), not installed, or not Linux."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(VARIABLE, "").strip()
    if chosen == GLIBC or not sys.platform.startswith("linux"):
        return None
    if chosen:
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
    """Whether a command line (the arguments after `edge-sel`) runs under memory budgets."""
    words = [a for a in args if not a.startswith("-")]
    command = words[0] if words else ""
    if command == "finetune":
        return any(a == "--memory-budget" or a.startswith("--memory-budget=") for a in args)
    return command == "bench" and len(words) > 1 and words[1] in ("transfer", "memory")


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
    if STARTED_WITH in environ or environ.get("LD_PRELOAD", "").strip():
        return
    if not (console_command(argv) and wanted(argv[1:])):
        return
    path = library(environ)
    if path is None:
        return
    environ[STARTED_WITH] = str(path)
    environ["LD_PRELOAD"] = str(path)
    environ.setdefault(PURGE_DELAY, str(PURGE_DELAY_MS))
    environ.setdefault(EAGER_COMMIT, "0")
    sys.stdout.flush()
    sys.stderr.flush()
    execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

