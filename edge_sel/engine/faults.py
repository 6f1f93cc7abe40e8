"""Fault injection for crash-safety tests: `EDGE_SEL_FAULT_KILL_AT=NAME` makes the process die like
a power cut (SIGKILL, nothing flushed or cleaned up) when it reaches the point called NAME, and
`EDGE_SEL_FAULT_SIGNAL_AT=NAME:SIGINT` sends itself that signal there (a Ctrl-C at that instant).

Points: `last-state` (the last epoch's state is written), `tested` (the end-of-run test pass is
done), `model-written` (model.safetensors is written, summary.json not yet), and the promote swap's
steps (`promote-*`, see engine/night/promote.py). Unset, every point is a no-op."""

from __future__ import annotations

import os
import signal

KILL_ENV = "EDGE_SEL_FAULT_KILL_AT"
SIGNAL_ENV = "EDGE_SEL_FAULT_SIGNAL_AT"


class InjectedCrash(BaseException):
    """What `point` raises instead of SIGKILL when a test sets `crash_by_raising` (an in-process
    crash: nothing after the point runs, as after a power cut)."""


crash_by_raising = False


def point(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        if crash_by_raising:
            raise InjectedCrash(name)
        os.kill(os.getpid(), signal.SIGKILL)
    where, _, sig = os.environ.get(SIGNAL_ENV, "").partition(":")
    if where == name:
        os.kill(os.getpid(), getattr(signal, sig or "SIGINT"))
