"""What a prediction costs on this machine: `edge-sel predict` at batch 1 (a camera's frames), for
each checkpoint given, in torch and ONNX Runtime, with and without its BatchNorm bank, side by side
in one run, the configurations interleaved and repeated.

    python benchmarks/bench_predict.py --checkpoint edgecnn=HOME/checkpoints/deployed --checkpoint mobilenetv2=DIR \\
        --dataset folder:../shared/data/cifar10-jpeg --frames 500 --repeats 2

Each configuration runs as its own `edge-sel predict` process (so peak resident memory is its own)
over the same frames (a camera stream of test images, clean and gaussian_noise:3 segments). Prints
latency p50/p95 per frame (choosing the condition and the forward pass), images/s, joules per 1,000
frames with the meter that measured them, peak resident memory, and the bank's cost over the plain
forward (p50 with the bank / p50 without, minus 1). Medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edge_sel.data.camera import camera_stream
from edge_sel.engine.runs.data_options import DataOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_stream import write_frames  # noqa: E402


def run(checkpoint: Path, frames: Path, backend: str, bank: bool, threads: int | None, tmp: Path) -> dict:
    summary = tmp / "summary.json"
    cmd = [sys.executable, "-m", "edge_sel", "predict", "--checkpoint", str(checkpoint), str(frames),
           "--backend", backend, "--out", str(tmp / "pred.jsonl"), "--summary", str(summary), "--quiet"]
    cmd += [] if bank else ["--no-bank"]
    cmd += ["--threads", str(threads)] if threads else []
    subprocess.run(cmd, check=True)
    return json.loads(summary.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, help="NAME=DIR (a checkpoint with a bank)")
    ap.add_argument("--dataset", default="folder:../shared/data/cifar10-jpeg")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-ort", action="store_true")
    a = ap.parse_args()
    checkpoints = dict(item.split("=", 1) for item in a.checkpoint)
    test = DataOptions(a.dataset).load().test
    stream = camera_stream(test, ["clean", "gaussian_noise:3"], 100, 30, seed=0)
    backends = ["torch"] + ([] if a.no_ort else ["ort"])
    results: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = tmp / "frames"
        write_frames(stream.images[:a.frames], frames)
        exports = {}
        if not a.no_ort:
            for name, ckpt in checkpoints.items():
                exports[name] = tmp / f"art-{name}"
                subprocess.run([sys.executable, "-m", "edge_sel", "export", "--checkpoint", ckpt, "--out",
                                str(exports[name]), "--scheme", "classifier"], check=True, stdout=subprocess.DEVNULL)
        for r in range(a.repeats):
            for name, ckpt in checkpoints.items():
                for backend in backends:
                    for bank in (True, False):
                        where = Path(ckpt) if backend == "torch" else exports[name]
                        s = run(where, frames, backend, bank, a.threads, tmp)
                        results.setdefault((name, backend, bank), []).append(s)
            print(f"repeat {r + 1}/{a.repeats} done", flush=True)
    med = lambda rows, k: statistics.median(x[k] for x in rows if x[k] is not None) \
        if any(x[k] is not None for x in rows) else None
    print(f"\n{a.frames} frames at batch 1, median of {a.repeats} interleaved repeats, threads "
          f"{a.threads or 'default'}:")
    print(f"  {'model':12s} {'backend':7s} {'bank':5s} {'p50 ms':>8s} {'p95 ms':>8s} {'images/s':>9s} "
          f"{'J/1000':>8s} {'peak MB':>8s}  meter")
    for (name, backend, bank), rows in results.items():
        j = med(rows, "joules_per_1000")
        print(f"  {name:12s} {backend:7s} {'yes' if bank else 'no':5s} {med(rows, 'latency_ms_p50'):8.3f} "
              f"{med(rows, 'latency_ms_p95'):8.3f} {med(rows, 'images_per_s'):9.1f} "
              f"{'-' if j is None else f'{j:8.2f}':>8s} {med(rows, 'peak_rss_mb'):8.0f}  "
              f"{rows[0]['energy_source']} ({rows[0]['energy_method']})")
    print("\nthe bank's choice over the plain forward (p50 with / p50 without - 1):")
    for name in checkpoints:
        for backend in backends:
            on, off = results[(name, backend, True)], results[(name, backend, False)]
            print(f"  {name:12s} {backend:7s} {100 * (med(on, 'latency_ms_p50') / med(off, 'latency_ms_p50') - 1):+6.1f}%"
                  f"  (counted: forward {on[0]['flops_forward_per_image'] or 0:,} FLOPs, choice "
                  f"{on[0]['flops_choice_per_image']:,} FLOPs per image)")


if __name__ == "__main__":
    main()
