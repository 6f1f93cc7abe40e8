"""Train-step time per update scheme and per backend, measured side by side in one run.

For every scheme (full, last-block, classifier, bias) the same model takes training steps on the
same batch with the torch backend (requires_grad set to the scheme's trainable tensors, BatchNorm
in eval mode) and with the ORT backend on artifacts exported for that scheme. The two backends
and the four schemes are interleaved round by round, so a change in machine load hits all of
them alike; the table reports medians. Inputs are random tensors: step time does not depend on
pixel values.

Columns: counted FLOPs of the step (forward + backward, torch.utils.flop_counter on the torch
graph with the same trainable set), ORT's gradient node count from the manifest, then the median
ms per step: torch backend, ORT backend (what the loop pays: the step, the weights copied back
into the torch model, the loss from the logits) and the bare ORT step (Module call + optimizer
step), and each against the full scheme on the same backend.

    flock /tmp/edge-sel-cpu.lock python benchmarks/bench_ort.py                  # edgecnn, 3x32x32, batch 64
    flock /tmp/edge-sel-cpu.lock python benchmarks/bench_ort.py --checkpoint DIR # a real checkpoint
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edge_sel.backends.torch_backend import TorchBackend  # noqa: E402
from edge_sel.core.checkpoint import ModelCard, save_checkpoint  # noqa: E402
from edge_sel.core.flops import FlopCounter  # noqa: E402
from edge_sel.data import Batch  # noqa: E402
from edge_sel.methods import Updater  # noqa: E402
from edge_sel.models import load_checkpoint  # noqa: E402
from edge_sel.models import build_model  # noqa: E402

SCHEMES = ("full", "last-block", "classifier", "bias")


def synthetic_checkpoint(directory: Path, size: int) -> Path:
    """edgecnn with random weights and distinct BatchNorm values (timing does not need training)."""
    torch.manual_seed(0)
    model = build_model("edgecnn", 10, 3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    card = ModelCard("edgecnn", 10, [f"c{i}" for i in range(10)], [3, size, size], [0.5] * 3, [0.25] * 3)
    save_checkpoint(directory, model, card)
    return directory


def torch_backend(checkpoint: Path, trainable: list[str]):
    from edge_sel.backends.ort_schemes import set_trainable
    model, _ = load_checkpoint(checkpoint)
    set_trainable(model, trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0)
    return model, TorchBackend(model, opt, Updater(), torch.device("cpu"), amp=False, bn_mode="eval")


def ort_backend(checkpoint: Path, art: Path, scheme: str):
    from edge_sel.backends.ort_backend import OrtBackend
    from edge_sel.backends.ort_manifest import resolve
    model, _ = load_checkpoint(checkpoint)
    directory, scheme, manifest, _ = resolve(art / scheme)
    backend = OrtBackend(model, directory, manifest, scheme)
    backend.set_lr(0.01)
    return model, backend


def bare_ort_step(backend, batch: Batch):
    x, y = batch.x.numpy(), batch.y.numpy()
    w = np.ones(len(y), np.float32)

    def step(_i, _batch):
        backend.module.train()
        backend.module(x, y, w)
        backend.optimizer.step()
        backend.module.lazy_reset_grad()
    return step


def time_steps(step, batch: Batch, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        step(i, batch)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="Default: random edgecnn, 3 x SIZE x SIZE.")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="Timed steps per backend, scheme and round.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    from edge_sel.export.exporter import export_artifacts
    torch.set_num_threads(args.threads)   # the ORT backend takes the same thread count
    tmp = Path(tempfile.mkdtemp(prefix="bench-ort-"))
    checkpoint = args.checkpoint or synthetic_checkpoint(tmp / "ckpt", args.size)
    manifest = export_artifacts(checkpoint, tmp / "art", SCHEMES, bn_mode="eval", optimizer="sgd")
    shape = manifest["input"]["shape"][1:]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, *shape, generator=g)
    y = torch.randint(0, manifest["checkpoint"]["num_classes"], (args.batch_size,), generator=g)
    batch = Batch(torch.arange(len(y)), torch.arange(len(y)), x, y, None)

    runners, flops = {}, {}
    for scheme in SCHEMES:
        trainable = manifest["schemes"][scheme]["trainable"]
        t_model, t_backend = torch_backend(checkpoint, trainable)
        flops[scheme] = sum(FlopCounter(t_model, shape).train_step(args.batch_size))
        _, o_backend = ort_backend(checkpoint, tmp / "art", scheme)
        runners[scheme] = {"torch": t_backend.train_step, "ort": o_backend.train_step,
                           "ort bare": bare_ort_step(o_backend, batch)}
        for step in runners[scheme].values():   # warm-up: allocations, kernel selection
            time_steps(step, batch, 2)

    times = {(s, b): [] for s in SCHEMES for b in ("torch", "ort", "ort bare")}
    for _ in range(args.rounds):
        for scheme in SCHEMES:
            for name, step in runners[scheme].items():
                times[(scheme, name)] += time_steps(step, batch, args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"edgecnn {'x'.join(map(str, shape))}, batch {args.batch_size}, {args.threads} thread(s), "
          f"BatchNorm eval mode, SGD; median of {args.rounds} x {args.steps} steps per cell")
    print(f"{'scheme':<11} {'trainable':>9} {'GFLOP/step':>10} {'grad nodes':>10} {'torch ms':>9} "
          f"{'ort ms':>8} {'ort bare':>9} {'ort/torch':>9} {'torch vs full':>13} {'ort vs full':>11}")
    for scheme in SCHEMES:
        s = manifest["schemes"][scheme]
        t, o, ob = med[(scheme, "torch")], med[(scheme, "ort")], med[(scheme, "ort bare")]
        print(f"{scheme:<11} {s['trainable_entries']:>9,} {flops[scheme] / 1e9:>10.3f} "
              f"{s['backward']['grad_nodes']:>10} {t:>9.1f} {o:>8.1f} {ob:>9.1f} {o / t:>9.2f} "
              f"{t / med[('full', 'torch')]:>13.2f} {o / med[('full', 'ort')]:>11.2f}")


if __name__ == "__main__":
    main()
