"""Other work on the CPU, on purpose: N busy processes (a pure-Python loop each) at a nice level,
beside any measurement, so "under load" figures are made the same way every time.

    python benchmarks/contention.py --busy 2 -- edge-sel finetune ...      # the command beside 2 busy processes
    with busy(2): measure()                                            # the same from Python

The processes are started in their own process group and killed with it when the block or the
command ends, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_sel.bench.contention import busy  # noqa: E402,F401  (tests and benchmarks import it from here)


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
