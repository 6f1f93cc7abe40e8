"""A fine-tune refused by a memory plan on a device's first start, started once more in a fresh
process (engine/loop/started_again.py says why that start fits where the first did not).

Only the console command replaces itself, once on each allocator: for a plan refused after this process
kept counts or timings that a fresh start reads, and for a plan refused on the mimalloc started for the
budget (edge_sel/allocator.py), on glibc's allocator; a refusal in the start made again on glibc is
final and said as any other. The new process runs the same command line with the environment as it is
now, and counts the refused starts' planning in its own totals."""

from __future__ import annotations

import atexit
import os
import sys

import click

from edge_sel import allocator
from edge_sel.errors import (ON_GLIBC_AFTER_MIMALLOC, STARTED_AGAIN, RefusedAfterMeasuring,   # not the engine:
                              RefusedOnMimalloc, parse_json)             # no torch before cli.py's settings

COMMANDS = ("finetune",)


def _started_again_here() -> bool:
    """Whether the environment says this process is a start made again on its allocator."""
    said = os.environ.get(STARTED_AGAIN)
    if said is None:
        return False
    try:
        found = parse_json(said)
    except ValueError:
        return True
    return not (isinstance(found, dict) and ON_GLIBC_AFTER_MIMALLOC in found)


# Read when the command line starts, before the run takes the variable: this process is itself a start
# made again on its allocator, so a refusal here is final (a start on glibc after one refused on
# mimalloc may start again once more, reading what it measured).
STARTED_AGAIN_HERE = _started_again_here()
# Set by the console entry point (cli.main): a command invoked inside another program (tests, the
# Python API) never replaces that program's process.
as_process = False


def own_command_line() -> bool:
    """Whether the process was started with this command's arguments (`edge-sel ARGS`, `python -m
    edge_sel ARGS`), not as another program calling the entry point (a test runner)."""
    args = sys.argv[1:]
    return bool(args) and len(sys.orig_argv) > len(args) and sys.orig_argv[-len(args):] == args


def replaceable(command: str) -> bool:
    """Whether this process is a fine-tune's own command line, which may replace itself."""
    return as_process and own_command_line() and command in COMMANDS


def may_start_again(command: str) -> bool:
    """Whether a RefusedAfterMeasuring in this process starts `command` once more (start_again)."""
    return replaceable(command) and not STARTED_AGAIN_HERE


def start_again(e: RefusedAfterMeasuring, command: str) -> None:
    """Replaces this process with the same command line, where that is allowed; returns where it is
    not (the caller then says the refusal as any other)."""
    if not may_start_again(command):
        return
    click.echo(f"edge-sel: note: {e}; this start measured the step counts or costs this device's caches "
               f"lacked, which grew the process: starting once more, reading them", err=True)
    _replace(e.told())


def start_on_glibc(e: RefusedOnMimalloc, command: str) -> None:
    """Replaces this process with the same command line on glibc's allocator, where it runs on the
    mimalloc started for its budget; returns where it does not."""
    if not replaceable(command) or not allocator.on_glibc_instead(os.environ):
        return
    click.echo(f"edge-sel: note: {e}; mimalloc pins more of the process than glibc's heap: starting once "
               f"more on glibc's allocator", err=True)
    _replace(e.told())


def _replace(cost: str) -> None:
    os.environ[STARTED_AGAIN] = cost
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()         # what exiting would do: claims released, files closed
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
