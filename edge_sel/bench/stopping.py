"""A bench stopped by SIGINT or SIGTERM: the run under way stops as a run does (its state
checkpointed, its summary saying "interrupted"), the bench starts no other run, and every run that
stopped early is named as stopped instead of becoming a row: a mean or a paired difference over a
run cut short would compare fewer epochs with more. The bench then exits 128 + the signal's number.

A run in a process of its own gets the signal twice at most: from the terminal (Ctrl-C reaches the
whole process group) and forwarded from here as SIGTERM, which the run takes as one stop request."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BenchStop:
    """A context for a bench's runs: `signum` is the first stop signal the bench received (None:
    none); `stopped_run` reads whether a run ended early, and `runs` lists those that did."""

    def __init__(self):
        self.signum: int | None = None
        self.runs: list[dict] = []
        self._old: dict = {}

    def __enter__(self) -> "BenchStop":
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._request) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _request(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt         # a second Ctrl-C: at once
        self.signum = self.signum or signum
        for child in multiprocessing.active_children():     # a run in a process of its own
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    @property
    def stopped(self) -> bool:
        return self.signum is not None or bool(self.runs)

    def ran(self, run, run_dir: Path, name: str, seed: int, planned: int) -> bool:
        """Calls `run()` (one fine-tune into `run_dir`) unless the bench was told to stop; False
        where it did not run to its end (then named in `runs`)."""
        if self.stopped:
            return False
        try:
            run()
        except BaseException:
            if self.signum is None:     # a failure, not a stop (a run in a process of its own stopped early)
                raise
        return not self.stopped_run(run_dir, name, seed, planned)

    def stopped_run(self, run_dir: Path, name: str, seed: int, planned: int) -> bool:
        """Whether the run in `run_dir` ended early (its summary says interrupted, or it left none
        after a stop signal); if so it is added to `runs`."""
        try:
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        if summary is not None and summary.get("stop_reason") != "interrupted":
            late = summary.get("late_stop_signal")      # the run is whole, and the bench was told to stop
            if self.signum is None and late in ("SIGINT", "SIGTERM"):
                self.signum = getattr(signal, late)
            return False
        if summary is None and self.signum is None:
            raise RuntimeError(f"{run_dir}: the run left no readable summary.json")
        sig = (summary or {}).get("stop_signal")
        if self.signum is None and sig in ("SIGINT", "SIGTERM"):
            self.signum = getattr(signal, sig)      # the run got it alone (in this process, or only it)
        self.runs.append({"method": name, "seed": seed, "run_dir": str(run_dir),
                          "stop_signal": sig or signal.Signals(self.signum).name,
                          "epochs_run": (summary or {}).get("epochs_run", 0), "epochs_planned": planned})
        return True

    def describe(self) -> dict | None:
        """For results.json: the signal and the runs left out (None: the bench was not stopped)."""
        if not self.stopped:
            return None
        return {"signal": signal.Signals(self.signum or signal.SIGINT).name, "runs": list(self.runs)}

    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + (self.signum or signal.SIGINT)


def stop_words(stopped: dict) -> str:
    """What stopped a bench and which runs it cut short."""
    runs = "; ".join(f"{r['method']} seed {r['seed']} ({r['epochs_run']} of {r['epochs_planned']} epochs)"
                     for r in stopped["runs"])
    return f"stopped by {stopped['signal']}" + (f"; stopped early, left out of every mean and paired difference: "
                                                f"{runs}" if runs else " between runs")


def stopped_lines(stopped: dict | None) -> list[str]:
    """The stop, for a bench's table.md (none: no lines)."""
    return ["", f"Partial: {stop_words(stopped)}."] if stopped else []
