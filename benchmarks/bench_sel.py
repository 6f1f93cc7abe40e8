"""SEL against dense fine-tuning on CIFAR-10, side by side in one run, same epoch budget.

From a warmup checkpoint (edgecnn pretrained on shard 0/2), fine-tune on shard 1/2 with:
  dense          every sample, every parameter;
  sel (layers)   our default: warmup-checkpoint curriculum, validation gates, layer freezing;
  sel random     the same with a random order inside each class (the curriculum's control);
  sel-95 preset  the seed's recipe: untrained-model order, guilt mask, Adam with loss-scaled lr;
and print one Markdown table: final test accuracy, counted FLOPs (forward, backward, scoring and
calibration passes), training wall time, and energy with its source as the records state it.

    flock /tmp/edge-sel-cpu.lock python benchmarks/bench_sel.py --subset 10000 --epochs 10

Every run goes through `edge-sel finetune`, so what is measured is what a user runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg"
CHECKPOINT = Path("/work/bench-ckpt/cifar-edgecnn-warmup")


def variants(lr: float, extra: bool) -> dict[str, list[str]]:
    """Dense, sel and its control share one optimizer and schedule; the preset brings its own."""
    common = ["--optimizer", "sgd", "--lr", str(lr), "--schedule", "cosine", "--batch-size", "128"]
    runs = {
        "dense": common,
        "sel (layers)": common + ["--strategy", "sel"],
        "sel random (layers)": common + ["--strategy", "sel", "--difficulty", "random"],
        "sel-95 preset (mask)": ["--strategy", "sel", "--preset", "sel-95"],
    }
    if extra:
        runs.update({
            "dense + layers": common + ["--sparsity", "layers"],
            "sel, no sparsity": common + ["--strategy", "sel", "--sparsity", "none"],
            "sel + class focus (layers)": common + ["--strategy", "sel", "--class-focus"],
        })
    return runs


def run_variant(name: str, args: list[str], opts, out: Path) -> dict:
    run_dir = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("+", "plus")
    cmd = [sys.executable, "-m", "edge_sel", "finetune", "--checkpoint", str(opts.checkpoint),
           "--dataset", f"folder:{opts.data}", "--shard", "1/2", "--subset", str(opts.subset),
           "--epochs", str(opts.epochs), "--seed", str(opts.seed), "--out", str(run_dir), "--overwrite",
           "--quiet", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"name": name, "summary": summary, "records": records, "cmd": " ".join(cmd[2:])}


def gflop(v) -> str:
    return "-" if v is None else f"{v / 1e9:,.0f}"


def table(results: list[dict]) -> str:
    dense = next(r for r in results if r["name"] == "dense")["summary"]["totals"]
    head = ["method", "test acc", "val acc", "samples trained", "fwd GFLOP", "bwd GFLOP", "bwd / dense",
            "scoring+calib GFLOP", "train GFLOP / dense", "update kind", "frozen or masked", "train wall s",
            "energy J (source/method)"]
    rows = []
    for r in results:
        s, t, recs = r["summary"], r["summary"]["totals"], r["records"]
        extra = (t.get("flops_scoring") or 0) + (t.get("flops_calibration") or 0)
        kind = recs[0].get("sparsity_kind") or "dense"
        sparsity = sum(x.get("grad_sparsity") or 0 for x in recs) / max(1, len(recs))
        energy = "-" if t.get("energy_j") is None else \
            f"{t['energy_j']:,.0f} ({t.get('energy_source')}/{t.get('energy_method')})"
        rows.append([r["name"], f"{s['final']['test_acc']:.4f}", f"{s['final']['val_acc']:.4f}",
                     f"{t['samples_trained']:,}", gflop(t["flops_forward"]), gflop(t["flops_backward"]),
                     f"{t['flops_backward'] / dense['flops_backward']:.3f}", gflop(extra),
                     f"{t['flops_train'] / dense['flops_train']:.3f}", kind, f"{sparsity:.3f}",
                     f"{t['train_wall_s']:.0f}", energy])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def stage_trace(result: dict) -> str:
    recs = result["records"]
    return ", ".join(f"{r['stage']}{'' if r.get('stage_gate') is None else ':' + r['stage_gate']}"
                     f"@{r['val_acc']:.3f}" for r in recs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--subset", type=int, default=10_000, help="fine-tuning samples from shard 1/2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.02, help="SGD learning rate of dense, sel and the control")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-sel")
    parser.add_argument("--extra", action="store_true",
                        help="also run the ablations: dense + layers, sel without sparsity, sel + class focus")
    opts = parser.parse_args()
    if not (opts.checkpoint / "model.json").is_file():
        sys.exit(f"bench_sel: no warmup checkpoint at {opts.checkpoint} (edge-sel pretrain --model edgecnn "
                 f"--dataset folder:{opts.data} --shard 0/2 --epochs 8 --out {opts.checkpoint})")
    runs = variants(opts.lr, opts.extra)
    print(f"bench_sel: {len(runs)} runs of {opts.epochs} epochs on {opts.subset:,} samples of CIFAR-10 "
          f"shard 1/2 from {opts.checkpoint}", file=sys.stderr)
    t0 = time.perf_counter()
    results = [run_variant(name, args, opts, opts.out) for name, args in runs.items()]
    print(table(results))
    print()
    for r in results:
        if r["records"] and r["records"][0].get("stage") is not None:
            print(f"- stages of {r['name']} (stage:gate@val_acc): {stage_trace(r)}")
    by_name = {r["name"]: r["summary"] for r in results}
    d, s = by_name["dense"], by_name["sel (layers)"]
    ratio = s["totals"]["flops_backward"] / d["totals"]["flops_backward"]
    gap = (d["final"]["test_acc"] - s["final"]["test_acc"]) * 100
    verdict = "met" if ratio <= 0.5 and gap <= 1.0 else "missed"
    print(f"\nAim (sel (layers) <= 0.5x dense backward FLOPs, within 1 point of dense test accuracy): {verdict} "
          f"- backward {ratio:.3f}x dense, test accuracy {abs(gap):.2f} points {'below' if gap > 0 else 'above'} dense.")
    print(f"FLOPs: counted per pass by torch.utils.flop_counter; evaluation passes are excluded. Energy: the "
          f"records' energy_j with its source/method (an 'estimate' is not a measurement). "
          f"Total benchmark time {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
