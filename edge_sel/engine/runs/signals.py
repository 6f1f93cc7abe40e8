"""SIGINT/SIGTERM during a run: the first asks the trainer to finish its step, checkpoint and stop;
a second SIGINT interrupts at once. The handlers stay until the run's outputs are written, so a
Ctrl-C after the last epoch still ends with a complete run directory."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code_for(signum: int | None) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
    return 128 + (signum or signal.SIGINT)


class StopSignals:
    """A context for one run; `attach(trainer)` starts deferring signals to that trainer (once the
    trainer exists: a signal before then interrupts at once, as nothing is worth saving yet)."""

    def __init__(self):
        self.trainer = None
        self.received: int | None = None      # the first stop signal, if one came
        self._old: dict = {}

    def attach(self, trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self.trainer = trainer
        if not self._old:       # a second trainer of the run (a head stage's successor) keeps the first's
            self._old = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS}

    def _request_stop(self, signum, frame):
        if self.trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum
        self.trainer.stop_requested = True

    def __enter__(self) -> "StopSignals":
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}
