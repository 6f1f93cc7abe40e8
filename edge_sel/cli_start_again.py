"""A fine-tune refused by a memory plan on a device's first start, started once more in a fresh
process (engine/loop/started_again.py says why that start fits where the first did not).

Only the console command replaces itself, only once, and only for a plan refused after this process
kept counts or timings that a fresh start reads; a refusal in the start made again is final and said
as any other. The new process runs the same command line with the environment as it is now, and
counts the refused start's planning in its own totals."""

from __future__ import annotations

import atexit
import json
import os
import sys

import click

from edge_sel.errors import STARTED_AGAIN, RefusedAfterMeasuring     # not the engine: no torch before cli.py's settings

COMMANDS = ("finetune",)
# Read when the command line starts, before the run takes the variable: this process is itself a
# start made again, so a refusal here is final.
STARTED_AGAIN_HERE = STARTED_AGAIN in os.environ
# Set by the console entry point (cli.main): a command invoked inside another program (tests, the
# Python API) never replaces that program's process.
as_process = False


def own_command_line() -> bool:
    """Whether the process was started with this command's arguments (`edge-sel ARGS`, `python -m
    edge_sel ARGS`), not as another program calling the entry point (a test runner)."""
    args = sys.argv[1:]
    return bool(args) and len(sys.orig_argv) > len(args) and sys.orig_argv[-len(args):] == args


def start_again(e: RefusedAfterMeasuring, command: str) -> None:
    """Replaces this process with the same command line, where that is allowed; returns where it is
    not (the caller then says the refusal as any other)."""
    if not (as_process and own_command_line()) or STARTED_AGAIN_HERE or command not in COMMANDS:
        return
    click.echo(f"edge-sel: note: {e}; this start measured the step counts or costs this device's caches "
               f"lacked, which grew the process: starting once more, reading them", err=True)
    os.environ[STARTED_AGAIN] = json.dumps(e.cost)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()         # what exiting would do: claims released, files closed
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
