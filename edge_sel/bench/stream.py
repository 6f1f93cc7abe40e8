"""`edge-sel bench stream`: gates on a camera's stream, where selection should pay.

The device's data is a stream (`--shift frames=F`): every scene of the fine-tuning shard filmed as F
near-duplicate frames. Per target activation: random gating (the control), the Sundew gate on its
loss-based significance, the Sundew gate with novelty (`--novelty 1`), and one frame per scene
trained at the same number of backward passes (the de-duplication ceiling: what a perfect
de-duplicator would give the random gate). Every method of a seed starts from the same warmup and
sees the same scenes, frames, corruption and data order. Per run: accuracy on the stream's test
scenes, counted training FLOPs (scoring and novelty included), joules with their source, and scene
coverage (distinct scenes an epoch trains on, of all training scenes, mean over epochs). Per
activation: each gate against random as a paired difference with its 95% interval.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_sel.bench.adapt import ci95, mean_of, outcome, paired, paired_table
from edge_sel.bench.outputs import write_bench_files
from edge_sel.config import TrainConfig
from edge_sel.core.records import read_records
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune

SCENARIOS = {"clean": "", "noise": "corrupt=gaussian_noise:3"}
ACTIVATIONS = (0.05, 0.1, 0.2)
FAMILIES = ("random", "sundew", "sundew-novelty", "one-per-scene")


@dataclass
class StreamMethod:
    name: str
    family: str
    activation: float | None
    strategy: str = "random"
    method: dict = field(default_factory=dict)
    epochs_factor: int = 1         # one-per-scene: more epochs over fewer frames, same backward passes
    dedup: bool = False


def stream_methods(activations, frames: int, families=FAMILIES) -> list[StreamMethod]:
    out = [StreamMethod("no adaptation", "none", None, "dense", epochs_factor=0)]
    for a in activations:
        if "random" in families:
            out.append(StreamMethod(f"random@{a}", "random", a, "random", {"target_activation": a}))
        if "sundew" in families:
            out.append(StreamMethod(f"sundew@{a}", "sundew", a, "sundew", {"target_activation": a}))
        if "sundew-novelty" in families:
            out.append(StreamMethod(f"sundew-novelty@{a}", "sundew-novelty", a, "sundew",
                                    {"target_activation": a, "novelty": 1.0}))
        if "one-per-scene" in families:
            share = a * frames                  # backward passes per scene per epoch
            k = max(1, math.ceil(share - 1e-9))
            out.append(StreamMethod(f"one-per-scene@{a}", "one-per-scene", a, "random",
                                    {"target_activation": min(1.0, share / k)}, epochs_factor=k, dedup=True))
    return out


def stream_spec(frames: int, order: str, scenario: str, dedup: bool) -> str:
    items = [f"frames={frames}:{'dedup' if dedup else order}", scenario]
    return ";".join(i for i in items if i)


def coverage(run_dir: Path) -> tuple[float | None, int | None]:
    """Mean over training epochs of the share of training scenes the epoch's plan trained on, and
    how many training scenes there were."""
    recs = [r for r in read_records(run_dir / "metrics.jsonl") if r.get("scenes_available")]
    if not recs:
        return None, None
    return statistics.fmean(r["scenes_planned"] / r["scenes_available"] for r in recs), recs[0]["scenes_available"]


def run_stream(checkpoint: Path, dataset: str, data_dir, scenes: int, frames: int, order: str, epochs: int,
               seeds: list[int], scenarios: dict[str, str], methods: list[StreamMethod], out: Path, lr: float,
               device: str, log=print) -> dict:
    results: dict = {name: {m.name: [] for m in methods} for name in scenarios}
    t0 = time.perf_counter()
    for scenario, spec in scenarios.items():
        for seed in seeds:
            for m in methods:
                data = DataOptions(dataset, data_dir, shard="1/2", subset=scenes,
                                   shift=stream_spec(frames, order, spec, m.dedup), shift_seed=seed)
                cfg = TrainConfig(epochs=epochs * m.epochs_factor, lr=lr, seed=seed, device=device,
                                  strategy=m.strategy, method=dict(m.method), keep="last", checkpoint_every=0)
                run_dir = out / "runs" / scenario / m.name.replace("@", "-at-").replace(" ", "-") / f"seed{seed}"
                finetune(checkpoint, data, cfg, run_dir, overwrite=True, quiet=True)
                summary = json.loads((run_dir / "summary.json").read_text())
                share, scenes_available = coverage(run_dir)
                result = {"seed": seed, **outcome(run_dir), "coverage": share, "scenes": scenes_available,
                          "flops_scoring": summary["totals"].get("flops_scoring") or 0, "run_dir": str(run_dir)}
                results[scenario][m.name].append(result)
                cov = "-" if result["coverage"] is None else f"{100 * result['coverage']:.0f}%"
                log(f"  {scenario} seed {seed} {m.name:22s} test {result['test_acc']:.4f} "
                    f"{result['flops_train'] / 1e9:8.2f} GFLOP coverage {cov}")
    return {"results": results, "wall_s": time.perf_counter() - t0}


def comparisons(results: dict, activations) -> list[dict]:
    pairs = [(f"{gate}@{a}", f"random@{a}") for a in activations
             for gate in ("sundew", "sundew-novelty", "one-per-scene")]
    pairs += [(f"sundew-novelty@{a}", f"sundew@{a}") for a in activations]
    return [p for p in (paired(results, a, b) for a, b in pairs) if p is not None]


def _fmt(value, scale=1.0, digits=2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def tables(bench: dict) -> str:
    lines = []
    for scenario, by_method in bench["results"].items():
        spec = stream_spec(bench["frames"], bench["order"], bench["scenarios"][scenario], False)
        lines += [f"### {scenario}: `--shift {spec}`", "",
                  "| method | test % | ± std | 95% CI of mean | train GFLOP | of which scoring | scene coverage % | joules |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, rows in by_method.items():
            if not rows:
                continue
            accs = [100 * r["test_acc"] for r in rows]
            mean, lo, hi = ci95(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
            lines.append(f"| {name} | {mean:.2f} | {std:.2f} | [{lo:.2f}, {hi:.2f}] | "
                         f"{_fmt(mean_of(rows, 'flops_train'), 1e-9)} | {_fmt(mean_of(rows, 'flops_scoring'), 1e-9, 3)} | "
                         f"{_fmt(mean_of(rows, 'coverage'), 100, 1)} | {_fmt(mean_of(rows, 'energy_j'), 1, 1)} |")
        lines += paired_table(bench["comparisons"][scenario])
        lines.append("")
    return "\n".join(lines)


def plot(bench: dict, out: Path) -> Path:
    """Test accuracy (mean and 95% interval over seeds) and scene coverage against target
    activation, one column per scenario."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scenarios = list(bench["results"])
    fig, axes = plt.subplots(2, len(scenarios), figsize=(5.2 * len(scenarios), 7), squeeze=False)
    for col, scenario in enumerate(scenarios):
        by_method = bench["results"][scenario]
        for family in FAMILIES:
            xs, ys, errs, covs = [], [], [], []
            for a in bench["activations"]:
                rows = by_method.get(f"{family}@{a}") or []
                if not rows:
                    continue
                mean, lo, _ = ci95([100 * r["test_acc"] for r in rows])
                xs.append(a)
                ys.append(mean)
                errs.append(0 if lo != lo else mean - lo)
                covs.append(100 * (mean_of(rows, "coverage") or 0))
            if xs:
                axes[0][col].errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=family)
                axes[1][col].plot(xs, covs, marker="o", label=family)
        base = by_method.get("no adaptation") or []
        if base:
            axes[0][col].axhline(100 * mean_of(base, "test_acc"), color="grey", ls=":", label="no adaptation")
        axes[0][col].set_title(f"{scenario} stream", fontsize=9)
        axes[0][col].set_ylabel("test accuracy % (95% CI over seeds)")
        axes[1][col].set_ylabel("scene coverage per epoch %")
        clip_to_percent(axes[0][col])      # a wide interval over few seeds must not draw accuracy below 0
        clip_to_percent(axes[1][col])
        for ax in axes[:, col]:
            ax.set_xlabel("target activation")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "stream.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def clip_to_percent(ax) -> None:
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.0))


def _scenes(bench: dict) -> str:
    found = {r["scenes"] for rows in bench["results"].values() for rs in rows.values() for r in rs if r.get("scenes")}
    return "/".join(str(n) for n in sorted(found)) or "?"


def write_outputs(bench: dict, out: Path) -> dict:
    bench["comparisons"] = {s: comparisons(r, bench["activations"]) for s, r in bench["results"].items()}
    md = tables(bench)
    notes = [f"{len(bench['seeds'])} paired seeds {bench['seeds']}: per seed every method starts from the same warmup "
             "and sees the same scenes, frames, corruption and data order.",
             f"{_scenes(bench)} training scenes of shard 1/2 (class-balanced, at most --subset "
             f"{bench['scenes']}), {bench['frames']} frames each, "
             f"seen in {bench['order']} order; test: one frame of each test scene.",
             "one-per-scene: one frame per training scene (a perfect de-duplicator), random gate at the "
             "same backward passes per scene (more epochs where the activation x frames exceeds 1).",
             "FLOPs are counted (torch.utils.flop_counter) for every training and scoring pass run; the "
             "novelty fingerprints and comparisons are counted as scoring; evaluation is excluded.",
             f"Joules: training phase, {', '.join(sorted(bench['energy_methods'])) or 'not measured'}"
             + (" (an estimate from CPU time, not a measurement)." if "estimated" in bench["energy_methods"] else "."),
             "Scene coverage: distinct scenes an epoch's plan trains on, of all training scenes, mean over epochs."]
    return write_bench_files(out, "stream", md, notes, bench, lambda: plot(bench, out))


def bench_record(args: dict, run: dict, methods: list[StreamMethod]) -> dict:
    used = {r.get("energy_method") for rows in run["results"].values() for rs in rows.values() for r in rs} - {None}
    return {**args, "methods": [asdict(m) for m in methods], "results": run["results"], "wall_s": run["wall_s"],
            "energy_methods": sorted(used)}
