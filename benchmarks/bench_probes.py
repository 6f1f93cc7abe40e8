"""What the layout and precision probes measure and keep, quiet and beside busy processes.

    python benchmarks/bench_probes.py --batch-sizes 64,128 --busy 0,2,0

For each batch size and each load level in turn (the same cache across levels, as a device keeps
it): the layout probe and then the precision probe for edgecnn on CIFAR-10's input shape, as a
fine-tune's start runs them, printing each arm's seconds per training step, the choice, the load
measured while probing, whether the result was kept as final or provisional, and whether it was
measured or reused. A level of 0 after a loaded one shows whether a quiet start measures again.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from edge_sel.bench.contention import busy  # noqa: E402
from edge_sel.engine.machine import layout
from edge_sel.engine import precision  # noqa: E402
from edge_sel.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="64,128")
    ap.add_argument("--busy", default="0,2,0", help="load levels in turn (busy processes)")
    a = ap.parse_args()
    os.environ.pop("EDGE_SEL_OTHER_LOAD", None)            # measured, not stated
    os.environ["EDGE_SEL_CACHE"] = tempfile.mkdtemp(prefix="probe-cache-")
    from edge_sel import threads
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cache {os.environ['EDGE_SEL_CACHE']}")
    for bs in (int(b) for b in a.batch_sizes.split(",")):
        for n in (int(b) for b in a.busy.split(",")):
            model = build_model("edgecnn", 10, 3)
            with busy(n):
                threads._sampled.clear()                    # each level is a new start: sample again
                lay = layout.choose_layout(model, (3, 32, 32), 10, torch.device("cpu"), bs)
                pre = precision.choose_precision(model, (3, 32, 32), 10, torch.device("cpu"), bs, lay.format,
                                                 lay.eval_batch_size)
            lt = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in lay.train_s_per_step.items())
            pt = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in pre.train_s_per_step.items())
            print(f"batch {bs}, busy {n}: layout {lay.memory_format} (eval batch {lay.eval_batch_size}; {lt}) "
                  f"{lay.source}, load {lay.other_load_cpus:.2f}, {'provisional' if lay.provisional else 'final'}")
            print(f"batch {bs}, busy {n}: precision train {pre.train} eval {pre.eval} ({pt}) {pre.source}, "
                  f"load {pre.other_load_cpus:.2f}, {'provisional' if pre.provisional else 'final'}", flush=True)


if __name__ == "__main__":
    main()
