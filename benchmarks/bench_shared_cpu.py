"""The same fine-tune (and the same frames predicted) beside 0, 1 and 2 busy processes
(edge_sel/bench/contention.py), with the old defaults and the new ones, interleaved: training wall
time and estimated joules all in, predict latency at batch 1, and each setting's ratio to its own
quiet run.

    python benchmarks/bench_shared_cpu.py --task digits --repeats 2
    python benchmarks/bench_shared_cpu.py --task cifar --repeats 1 --predict-frames 300

- old: what edge-sel did before it looked at the CPU: OpenMP's own waiting (its threads spin) and
  one thread per CPU (reproduced by stating EDGE_SEL_OTHER_LOAD=0, so nothing is seen as busy);
- new: the defaults (passive waiting and the CPUs other work leaves free, from the sample taken
  as the command starts).

digits: warmup `pretrain --dataset digits --shard 0/2 --epochs 3`, then `finetune --shard 1/2
--epochs 3`. cifar: the shared CIFAR-10 JPEGs, warmup on 5,000 images of shard 0/2 (2 epochs),
fine-tune on 5,000 images of shard 1/2 (2 epochs); with --predict-frames N, `edge-sel predict` of
the fine-tuned model over the first N test images (file-name order within each class folder,
classes in turn) at batch 1 in each condition. Every command is a fresh process. The machine's
load average before each row is printed: other work already there counts.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edge_sel.bench.contention import busy  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
SETTINGS = {"old (spinning, all CPUs)": {"EDGE_SEL_OTHER_LOAD": "0"},
            "new (passive, free CPUs)": {}}
TASKS = {
    "digits": (["--dataset", "digits", "--shard", "0/2", "--epochs", "3"],
               ["--dataset", "digits", "--shard", "1/2", "--epochs", "3"]),
    "cifar": (["--dataset", f"folder:{CIFAR}", "--shard", "0/2", "--subset", "5000", "--epochs", "2"],
              ["--dataset", f"folder:{CIFAR}", "--shard", "1/2", "--subset", "5000", "--epochs", "2"]),
}


def edge_sel(*args, env=None, timeout=None) -> None:
    subprocess.run([sys.executable, "-m", "edge_sel", *map(str, args)], check=True, env=env, timeout=timeout,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def frames(n: int, into: Path) -> Path:
    """The first n CIFAR-10 test images, classes in turn, linked into one folder in arrival order."""
    into.mkdir()
    classes = sorted(p for p in (CIFAR / "test").iterdir() if p.is_dir())
    lists = [sorted(c.iterdir()) for c in classes]
    for i in range(n):
        src = lists[i % len(lists)][i // len(lists)]
        (into / f"{i:06d}.jpg").symlink_to(src)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), default="digits")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--busy", default="0,1,2")
    ap.add_argument("--predict-frames", type=int, default=0, help="cifar only: frames predicted at batch 1")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds a fine-tune may take before it is stopped and reported as longer (old defaults "
                         "under load ran 7-70x their quiet time)")
    a = ap.parse_args()
    levels = [int(b) for b in a.busy.split(",")]
    pretrain_args, finetune_args = TASKS[a.task]
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = {k: v for k, v in os.environ.items()
                if k not in ("OMP_WAIT_POLICY", "EDGE_SEL_THREADS", "EDGE_SEL_OTHER_LOAD", "OMP_NUM_THREADS")}
        edge_sel("pretrain", "--model", "edgecnn", *pretrain_args, "--out", tmp / "warm", "--quiet", env=base)
        images = frames(a.predict_frames, tmp / "frames") if a.predict_frames and a.task == "cifar" else None
        for r in range(a.repeats):
            for n in levels:
                for name, extra in SETTINGS.items():
                    out = tmp / f"run-{r}-{n}-{len(extra)}"
                    load = os.getloadavg()[0]
                    with busy(n):
                        try:
                            edge_sel("finetune", "--checkpoint", tmp / "warm", *finetune_args, "--out", out,
                                     "--quiet", env={**base, **extra}, timeout=a.timeout)
                        except subprocess.TimeoutExpired:
                            print(f"repeat {r} busy {n} {name}: stopped after {a.timeout:.0f} s", flush=True)
                            rows.setdefault((name, n), []).append((float("inf"), float("inf"), load, None, None,
                                                                   None, None))
                            continue
                        if images is not None:
                            edge_sel("predict", "--checkpoint", out, images, "--out", out / "p.jsonl",
                                     "--summary", out / "p.json", "--quiet", env={**base, **extra})
                    s = json.loads((out / "summary.json").read_text())
                    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                    wall = sum(x.get("wall_s") or 0 for x in recs if x.get("phase") != "baseline")
                    p = json.loads((out / "p.json").read_text()) if images is not None else {}
                    row = (wall, s["totals"].get("energy_all_j"), load, s["threads"]["count"],
                           s["threads"]["wait_policy"], p.get("latency_ms_p50"), p.get("latency_ms_p95"))
                    rows.setdefault((name, n), []).append(row)
                    print(f"repeat {r} busy {n} {name}: training {wall:.2f} s, {row[1]:.1f} J (estimate), "
                          f"{row[3]} threads, waiting {row[4]}, load before {load:.2f}"
                          + (f", predict p50 {row[5]:.2f} ms p95 {row[6]:.2f} ms" if p else ""), flush=True)
    print(f"\n{a.task}, medians of {a.repeats}: training wall s, estimated joules all in, ratio to the same "
          "setting's quiet run" + (", predict latency ms at batch 1" if a.predict_frames else ""))
    for name in SETTINGS:
        quiet = statistics.median(x[0] for x in rows[(name, levels[0])])
        quiet_j = statistics.median(x[1] for x in rows[(name, levels[0])])
        for n in levels:
            got = rows[(name, n)]
            w, j = statistics.median(x[0] for x in got), statistics.median(x[1] for x in got)
            line = (f"  {name:26s} busy {n}: {w:7.2f} s ({w / quiet:5.2f}x)  {j:7.1f} J ({j / quiet_j:5.2f}x)  "
                    f"threads {got[0][3]}")    # inf: stopped at --timeout
            if got[0][5] is not None:
                line += (f"  predict p50 {statistics.median(x[5] for x in got):6.2f} ms"
                         f"  p95 {statistics.median(x[6] for x in got):6.2f} ms")
            print(line)


if __name__ == "__main__":
    main()
