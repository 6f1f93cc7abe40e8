"""A Ctrl-C while the command line is still importing (torch takes seconds) ends it with one line
and exit 130, not a KeyboardInterrupt traceback. Installed before the heavy imports, only when
edge-sel runs as a program; cli.main() puts Python's own handler back once start-up is over."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_during_start_up(signum, frame):
    print("edge-sel: interrupted", file=sys.stderr, flush=True)
    raise SystemExit(130)       # SystemExit unwinds the imports without a traceback


def quiet_start_up_interrupts(force: bool = False) -> None:
    if force or os.path.basename(sys.argv[0] if sys.argv else "") == "edge-sel":
        signal.signal(signal.SIGINT, _interrupted_during_start_up)
