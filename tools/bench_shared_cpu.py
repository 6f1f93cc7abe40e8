"""The same digits fine-tune beside 0, 1 and 2 busy processes (tools/contention.py), with the old
defaults (OpenMP threads spinning while they wait, one thread per CPU) and the new ones (passive
waiting, the CPUs other work leaves free), interleaved: training wall time and estimated joules
all in, and each setting's ratio to its own quiet run.

    python tools/bench_shared_cpu.py --repeats 2

The warmup is made once (`edge-sel pretrain --model edgecnn --dataset digits --shard 0/2 --epochs 3`);
each measurement is `edge-sel finetune --checkpoint W --dataset digits --shard 1/2 --epochs 3` in a
fresh process. Prints the machine's load average before each row: other work already there counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contention import busy  # noqa: E402

SETTINGS = {"old (spinning, all CPUs)": {"OMP_WAIT_POLICY": "ACTIVE", "EDGE_SEL_THREADS": str(os.cpu_count())},
            "new (passive, free CPUs)": {}}


def edge_sel(*args, env=None) -> None:
    subprocess.run([sys.executable, "-m", "edge_sel", *map(str, args)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--busy", default="0,1,2")
    a = ap.parse_args()
    levels = [int(b) for b in a.busy.split(",")]
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "EDGE_SEL_THREADS")}
        edge_sel("pretrain", "--model", "edgecnn", "--dataset", "digits", "--shard", "0/2", "--epochs", "3",
                 "--out", tmp / "warm", "--quiet", env=base)
        for r in range(a.repeats):
            for n in levels:
                for name, extra in SETTINGS.items():
                    out = tmp / f"run-{r}-{n}-{len(extra)}"
                    load = os.getloadavg()[0]
                    with busy(n):
                        edge_sel("finetune", "--checkpoint", tmp / "warm", "--dataset", "digits", "--shard", "1/2",
                                 "--epochs", "3", "--out", out, "--quiet", env={**base, **extra})
                    s = json.loads((out / "summary.json").read_text())
                    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                    wall = sum(x.get("wall_s") or 0 for x in recs if x.get("phase") != "baseline")
                    rows.setdefault((name, n), []).append((wall, s["totals"].get("energy_all_j"), load,
                                                           s["threads"]["count"]))
                    print(f"repeat {r} busy {n} {name}: training {wall:.2f} s, {s['totals'].get('energy_all_j'):.1f} J "
                          f"(estimate), {s['threads']['count']} threads, load before {load:.2f}", flush=True)
    print(f"\nmedians of {a.repeats}: training wall s, estimated joules all in, ratio to the same setting's quiet run")
    for name in SETTINGS:
        quiet = statistics.median(w for w, *_ in rows[(name, levels[0])])
        quiet_j = statistics.median(j for _, j, *_ in rows[(name, levels[0])])
        for n in levels:
            w = statistics.median(x[0] for x in rows[(name, n)])
            j = statistics.median(x[1] for x in rows[(name, n)])
            print(f"  {name:26s} busy {n}: {w:7.2f} s ({w / quiet:5.2f}x)  {j:7.1f} J ({j / quiet_j:5.2f}x)  "
                  f"threads {rows[(name, n)][0][3]}")


if __name__ == "__main__":
    main()
