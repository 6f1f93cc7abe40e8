"""Counted against measured training memory: one step of each configuration, each in a fresh process.

For every model, image size, batch size and step shape (what trains, micro-batches, recomputed
blocks) a child process builds the model on the CPU with one torch thread, runs one step to
create the optimizer's state and load its kernels, releases the allocator's free pages
(malloc_trim), then measures a second step with engine/machine/peak_memory.py: the growth of the
resident high-water mark (reset through /proc/self/clear_refs) over the resident size just before
the step, twice: under glibc's default allocator, whose mmap threshold rises as big blocks are
freed so that later ones come from a heap that keeps freed pages resident, and with
MALLOC_MMAP_THRESHOLD_=65536 (every block of 64 KiB or more mapped and unmapped when freed: the
resident size follows the bytes alive); their difference is the allocator's share. The counted figure is core/memory.py's for the same step: its high-water mark over what
exists before the step (weights, optimizer state, the batch), i.e. activations + gradients +
transient + the running CPU convolution's own buffers (core/kernel_workspace.py) at the peak;
shape `eval` is a forward-only pass (evaluation, scoring). A whole-batch step is the runtime's own (backends/torch_backend.py); a
micro-batched one accumulates gradients by hand as the counter counts it.

    nice -n 5 env EDGE_SEL_THREADS=1 python benchmarks/memory_check.py            # the whole table
    python benchmarks/memory_check.py --models edgecnn --sizes 32 --batches 32     # a part of it
    python benchmarks/memory_check.py --profile                                   # plus torch.profiler's count
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys

SHAPES = ("full", "classifier", "half-frozen", "recompute-half", "micro-4", "eval")
BATCHES = {32: (32, 64), 96: (16, 32)}
LIMIT = 0.15


def trainable_names(model, shape: str) -> set[str]:
    from edge_sel.models.blocks import named_blocks
    names = [n for n, _ in model.named_parameters()]
    if shape == "classifier":
        head = named_blocks(model)[-1][0]
        return {n for n in names if n.startswith(head + ".")}
    if shape == "half-frozen":         # the first half of the parameter tensors frozen
        return set(names[len(names) // 2:])
    return set(names)


def recomputed_blocks(model, shape: str) -> tuple[str, ...]:
    from edge_sel.models.blocks import named_blocks
    if shape != "recompute-half":
        return ()
    blocks = [n for n, _ in named_blocks(model)]
    return tuple(blocks[:len(blocks) // 2])


def measure(model_name: str, size: int, batch: int, shape: str, profile: bool) -> dict:
    """One configuration, in this process (a fresh one: the resident high-water mark is per process)."""
    import torch
    torch.set_num_threads(1)
    from edge_sel.backends.torch_backend import TorchBackend, make_optimizer
    from edge_sel.core.memory import MiB, MemoryCounter, StepShape
    from edge_sel.core.recompute import set_recomputed
    from edge_sel.data import Batch
    from edge_sel.engine.machine.peak_memory import PeakMeter, proc_status_bytes
    from edge_sel.methods import Updater
    from edge_sel.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, input_shape=[3, size, size]).train()
    trains = trainable_names(model, shape)
    for n, p in model.named_parameters():
        p.requires_grad_(n in trains)
    recompute = recomputed_blocks(model, shape)
    set_recomputed(model, recompute)
    micro = int(shape.split("-")[1]) if shape.startswith("micro-") else 0
    step_shape = StepShape(batch, micro_batch=micro, recompute=recompute)

    def optimizer_for(params):
        return make_optimizer("sgd", params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    optimizer = optimizer_for([p for p in model.parameters() if p.requires_grad])
    backend = TorchBackend(model, optimizer, Updater(), torch.device("cpu"), amp=False)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    rows = Batch(torch.arange(batch), torch.arange(batch), x, y)

    def step():
        if shape == "eval":                     # a forward-only pass: evaluation, scoring
            model.eval()
            with torch.no_grad():
                return model(x)
        if not micro:
            return backend.train_step(0, rows)
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, batch, micro):      # gradients accumulated, as the counter counts it
            logits = model(x[start:start + micro])
            loss = torch.nn.functional.cross_entropy(logits, y[start:start + micro], reduction="sum") / batch
            loss.backward()
            del logits, loss
        optimizer.step()

    step()                                      # optimizer state, kernels, lazily built tables
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)     # free pages back to the system: the start is what is alive
    meter = PeakMeter("cpu")
    before = proc_status_bytes("VmRSS")
    window = meter.begin()
    step()
    measured = meter.end(window)
    out = {"model": model_name, "size": size, "batch": batch, "shape": shape, "method": meter.method,
           "rss_before_mb": round(before / MiB, 1), "measured_mb": measured}
    if profile:
        out["profiler_mb"] = profiler_peak(step)
    counter = MemoryCounter(model, [3, size, size], optimizer_for, kernels="cpu")
    count = counter.count_forward(batch) if shape == "eval" else counter.count(step_shape, trains)
    out.update(count.mib())
    out["counted_mb"] = round((count.activations + count.gradients + count.transient + count.workspace) / MiB, 3)
    return out


def profiler_peak(step) -> float:
    """The step's peak of live CPU tensor bytes over its start, from torch.profiler's allocation events."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return round(peak / 2 ** 20, 3)


MMAP_ALWAYS = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_child(args: list[str], env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          env={**os.environ, "EDGE_SEL_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="edgecnn,mobilenetv2")
    parser.add_argument("--sizes", default="32,96")
    parser.add_argument("--batches", default=None, help="comma-separated (default: 32,64 at 32 px, 16,32 at 96 px)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--profile", action="store_true",
                        help="also count the first configuration's step with torch.profiler's allocation events")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "SIZE", "BATCH", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, size, batch, shape = args.child
        print(json.dumps(measure(model, int(size), int(batch), shape, args.child_profile)))
        return
    rows = []
    print(f"{'model':<12}{'px':>4}{'batch':>6}  {'shape':<15}{'counted':>9}{'measured':>10}{'diff':>7}"
          f"{'mmap>=64K':>10}{'diff':>7}{'act':>9}{'grad':>7}{'trans':>8}{'kernel':>8}{'rss0':>7}"
          + ("  profiler" if args.profile else ""))
    first = True
    for model in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            batches = [int(b) for b in args.batches.split(",")] if args.batches else BATCHES.get(size, (32, 64))
            for batch in batches:
                for shape in args.shapes.split(","):
                    child = [model, str(size), str(batch), shape]
                    row = run_child(child + (["--child-profile"] if args.profile and first else []))
                    first = False
                    mapped = run_child(child, MMAP_ALWAYS)
                    if "error" not in row and "error" not in mapped:
                        row["measured_mmap_mb"] = mapped["measured_mb"]
                    rows.append(row | {"model": model, "size": size, "batch": batch, "shape": shape})
                    if "error" in row:
                        print(f"{model:<12}{size:>4}{batch:>6}  {shape:<15}error: {row['error']}", flush=True)
                        continue
                    counted = max(row["counted_mb"], 1e-9)
                    row["diff"] = (row["measured_mb"] - counted) / counted
                    row["diff_mmap"] = (row.get("measured_mmap_mb", float("nan")) - counted) / counted
                    flag = " *" if abs(row["diff_mmap"]) > LIMIT or row["diff_mmap"] != row["diff_mmap"] else ""
                    print(f"{model:<12}{size:>4}{batch:>6}  {shape:<15}{row['counted_mb']:>9.1f}"
                          f"{row['measured_mb']:>10.1f}{row['diff']:>+7.0%}{row.get('measured_mmap_mb', float('nan')):>10.1f}"
                          f"{row['diff_mmap']:>+7.0%}{row['activations_mb']:>9.1f}"
                          f"{row['gradients_mb']:>7.2f}{row['transient_mb']:>8.1f}{row['workspace_mb']:>8.1f}{row['rss_before_mb']:>7.0f}"
                          + (f"  {row['profiler_mb']:.1f}" if "profiler_mb" in row else "") + flag, flush=True)
    print(f"\ncounted: activations + gradients + transient + the running convolution's own buffers (kernel, "
          f"by core/kernel_workspace.py's rule) at the counted step's high-water mark (core/memory.py); eval: a "
          f"forward-only pass (eval mode, no gradients); "
          f"measured: {rows[0].get('method', '?')} growth over the resident size before the step, under glibc's "
          f"default allocator and with MALLOC_MMAP_THRESHOLD_=65536 (mmap>=64K); profiler: torch.profiler's "
          f"allocation events over the step; * the mmap>=64K figure beyond {LIMIT:.0%} of the count")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
