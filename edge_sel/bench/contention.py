"""Other work on the CPU, on purpose: N busy processes (a pure-Python loop each) at a nice level,
beside any measurement, so that "under load" figures are made the same way every time and can be
compared (`edge-sel bench edge --busy N`, `benchmarks/bench_loop.py --busy N`, `benchmarks/contention.py`).

The processes start in their own process groups and are killed with them when the block ends,
Ctrl-C and errors included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

LOOP = "while True: pass"


@contextlib.contextmanager
def busy(n: int, nice: int = 0):
    """`n` processes that each keep one CPU busy at nice level `nice` for the block."""
    procs = [subprocess.Popen([sys.executable, "-c", f"import os\nos.nice({int(nice)})\n{LOOP}"],
                              start_new_session=True, stdin=subprocess.DEVNULL) for _ in range(max(0, n))]
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def describe(n: int, nice: int) -> str:
    return "no other work started" if n <= 0 else f"beside {n} busy process{'es' if n > 1 else ''} (nice {nice})"
