"""Other work on the CPU, on purpose: N busy processes (a pure-Python loop each) at a nice level,
beside any measurement, so "under load" figures are made the same way every time.

    python tools/contention.py --busy 2 -- edge-sel finetune ...      # the command beside 2 busy processes
    with busy(2): measure()                                            # the same from Python

The processes are started in their own process group and killed with it when the block or the
command ends, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys

LOOP = "while True: pass"


@contextlib.contextmanager
def busy(n: int, nice: int = 0):
    procs = [subprocess.Popen([sys.executable, "-c", f"import os\nos.nice({nice})\n{LOOP}"],
                              start_new_session=True) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the command")
    ap.add_argument("--nice", type=int, default=0, help="their nice level")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("give the command after --")
    with busy(a.busy, a.nice):
        return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
