"""`edge-sel bench adapt`: adapting a warmup checkpoint to a device's shifted data.

Scenarios x methods x paired seeds. Every method of a seed starts from the same warmup and sees the
same split, the same shifted images and flipped labels (`shift_seed` = seed), the same data order
(`seed`) and the same augmentation: each sample's crop and flip in an epoch are drawn from (seed,
epoch, sample id), so a gate's own random draws change which samples train, never how they look. Per run: accuracy on the shifted test set, on the clean
test set (what adaptation forgets), counted training FLOPs (every pass run, BatchNorm
re-estimation and scoring included) and training joules with their source. Per scenario: each
gate against random gating at the same target activation, as the paired difference with its 95%
confidence interval (Student t over seeds), and the recipe against dense.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_sel.bench.stopping import BenchStop, stopped_lines
from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import atomic_write_bytes
from edge_sel.core.records import read_records
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune
from edge_sel.report.runs import adaptation_flops

SCENARIOS = {
    "noise": "corrupt=gaussian_noise:3",
    "noise+labels": "corrupt=gaussian_noise:3;label-noise=0.2",
}
ACTIVATIONS = (0.2, 0.3, 0.5)
LEARNABILITY = {"significance": "learnability", "unseen": "neutral"}
# Two-sided 95% Student t quantiles for 1..30 degrees of freedom (beyond: the normal's 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


@dataclass
class AdaptMethod:
    name: str
    epochs: int | None = None             # None: the suite's epochs
    strategy: str = "dense"
    sparsity: str | None = None           # None: the strategy's (or the preset's) choice
    method: dict = field(default_factory=dict)
    bn_adapt: int = 0
    note: str = ""
    bn_stats: str | None = None           # the BatchNorm statistics lever (core/bn_stats.py); None: the default


def adapt_methods(activations=ACTIVATIONS) -> list[AdaptMethod]:
    out = [AdaptMethod("no adaptation", 0, note="the warmup as it is"),
           AdaptMethod("bn re-estimation", 0, bn_adapt=500, note="BatchNorm statistics from 500 unlabelled images"),
           AdaptMethod("dense", note="every sample, every parameter")]
    for a in activations:
        out.append(AdaptMethod(f"random@{a}", strategy="random", method={"target_activation": a}))
        out.append(AdaptMethod(f"sundew@{a}", strategy="sundew", method={"target_activation": a}))
        out.append(AdaptMethod(f"sundew-learn@{a}", strategy="sundew",
                               method={"target_activation": a, **LEARNABILITY},
                               note="sundew scoring likely-mislabelled samples 0, unseen samples neutral"))
    out.append(AdaptMethod("infobatch", strategy="infobatch", note="InfoBatch pruning with rescaled losses"))
    out.append(AdaptMethod("recipe", method={"preset": "adapt"}, note="--preset adapt"))
    out.append(AdaptMethod("classifier frozen", sparsity="classifier", bn_stats="frozen",
                           note="the classifier alone, BatchNorm statistics frozen"))
    out.append(AdaptMethod("classifier per-condition", sparsity="classifier", bn_stats="per-condition",
                           note="the classifier alone, BatchNorm statistics per condition (the source's kept)"))
    out.append(AdaptMethod("per-condition", bn_stats="per-condition",
                           note="every sample, every parameter, BatchNorm statistics per condition"))
    return out


def fixed_sparsity(sparsity: str | None, strategy: str, method: dict) -> str | None:
    """A row's updater: its own, the strategy's or the preset's where it names none, and every
    parameter for a plain dense row (which a plain finetune would choose for itself: --sparsity auto)."""
    return "none" if sparsity is None and strategy == "dense" and not method.get("preset") else sparsity


def with_source_memory(methods: list, checkpoint: Path, log=print) -> list:
    """The rows the checkpoint can run: statistics per condition need its anchors (the source's
    condition is estimated on them); without them those rows are left out, said in one line."""
    from edge_sel.core.checkpoint import read_card
    if read_card(checkpoint).source_memory is not None:
        return methods
    left = [m.name for m in methods if m.bn_stats == "per-condition"]
    if left:
        log(f"  {', '.join(left)}: left out, the start {checkpoint} ships no anchors (pretrain with "
            "--anchors-per-class)")
    return [m for m in methods if m.bn_stats != "per-condition"]


def ci95(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the mean's two-sided 95% interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = (T975[len(values) - 2] if len(values) - 1 <= len(T975) else 1.96) * \
        statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def outcome(run_dir: Path) -> dict:
    """What one run left: final accuracies (the baseline's when no epoch ran), totals."""
    summary = json.loads((run_dir / "summary.json").read_text())
    recs = read_records(run_dir / "metrics.jsonl")
    last = [r for r in recs if r.get("phase") != "baseline"] or recs
    final = last[-1]
    t = summary["totals"]
    return {"test_acc": final.get("test_acc"), "clean_test_acc": final.get("clean_test_acc"),
            # Training and a per-condition bank's re-estimation passes: the run charges those to its
            # evaluations, but they are what the method adapts by.
            "flops_train": adaptation_flops(t) or 0, "flops_bn_bank": t.get("flops_bn_bank") or 0,
            "energy_j": adaptation_joules(t), "energy_method": t.get("energy_method"),
            "train_wall_s": t.get("train_wall_s") or 0.0, "energy_all_j": t.get("energy_all_j"),
            "samples_trained": t.get("samples_trained") or 0, "bn_stats": final.get("bn_stats"),
            "lr": summary.get("config", {}).get("lr"), "chose": (summary.get("config", {}).get("choice") or {}).get("set")}


def adaptation_joules(totals: dict) -> float | None:
    """Training's joules and the bank's share of the evaluations' joules, by counted FLOPs (its passes
    run inside evaluation windows, not metered apart: the share is estimated)."""
    train, bank = totals.get("energy_j"), totals.get("flops_bn_bank") or 0
    if not bank or not totals.get("flops_eval") or totals.get("eval_energy_j") is None:
        return train
    return (train or 0.0) + totals["eval_energy_j"] * bank / totals["flops_eval"]


def run_adapt(checkpoint: Path, dataset: str, data_dir, subset: int, epochs: int, seeds: list[int],
              scenarios: dict[str, str], methods: list[AdaptMethod], out: Path, lr: float, device: str,
              log=print, stop: BenchStop | None = None, image_size: int | None = None,
              test_subset: int | None = None) -> dict:
    """A run stopped early (bench/stopping.py) ends the bench: it is named in "stopped", not a row.
    `image_size`: folder images resized to the device's resolution (None: as they are); `test_subset`:
    a class-balanced draw of the shard's test images (None: all of them)."""
    results: dict = {name: {m.name: [] for m in methods} for name in scenarios}
    stop = stop or BenchStop()
    t0 = time.perf_counter()
    for scenario, spec in scenarios.items():
        for seed in seeds:
            if stop.stopped:
                break
            data = DataOptions(dataset, data_dir, shard="1/2", subset=subset, shift=spec, shift_seed=seed,
                               image_size=image_size, test_subset=test_subset)
            for m in methods:
                cfg = TrainConfig(epochs=epochs if m.epochs is None else m.epochs, lr=lr, seed=seed, device=device,
                                  strategy=m.strategy, sparsity=fixed_sparsity(m.sparsity, m.strategy, m.method),
                                  method=dict(m.method),
                                  bn_adapt=m.bn_adapt, keep="last", checkpoint_every=0, bn_stats=m.bn_stats)
                run_dir = out / "runs" / scenario / m.name.replace("@", "-at-").replace(" ", "-") / f"seed{seed}"
                if not stop.ran(lambda: finetune(checkpoint, data, cfg, run_dir, overwrite=True, quiet=True),
                                run_dir, f"{scenario} {m.name}", seed, cfg.epochs):
                    break
                result = {"seed": seed, **outcome(run_dir), "run_dir": str(run_dir)}
                results[scenario][m.name].append(result)
                log(f"  {scenario} seed {seed} {m.name:18s} test {result['test_acc']:.4f} "
                    f"clean {result['clean_test_acc'] or 0:.4f} {result['flops_train'] / 1e9:8.1f} GFLOP")
    return {"results": results, "wall_s": time.perf_counter() - t0, "stopped": stop.describe()}


def paired(results: dict, a: str, b: str) -> dict | None:
    """a minus b over the seeds both ran, in accuracy points, with its 95% interval."""
    if a not in results or b not in results:
        return None
    by_seed = {r["seed"]: r for r in results[b]}
    diffs = [100 * (r["test_acc"] - by_seed[r["seed"]]["test_acc"]) for r in results[a] if r["seed"] in by_seed]
    if not diffs:
        return None
    mean, lo, hi = ci95(diffs)
    flops = [r["flops_train"] / max(1, by_seed[r["seed"]]["flops_train"]) for r in results[a] if r["seed"] in by_seed]
    # All-in joules (training, evaluation, planning) a over b, per seed, where both runs measured them.
    spent = [r["energy_all_j"] / by_seed[r["seed"]]["energy_all_j"] for r in results[a] if r["seed"] in by_seed
             and r.get("energy_all_j") and by_seed[r["seed"]].get("energy_all_j")]
    joules_ratio = dict(zip(("joules_ratio", "joules_ci_low", "joules_ci_high"), ci95(spent))) if spent else {}
    return {"a": a, "b": b, "n": len(diffs), "diff_pts": mean, "ci_low": lo, "ci_high": hi,
            "excludes_zero": bool(lo > 0 or hi < 0), "flops_ratio": statistics.fmean(flops), "per_seed": diffs,
            **joules_ratio}


def comparisons(results: dict, activations=ACTIVATIONS) -> list[dict]:
    pairs = [(f"{gate}@{a}", f"random@{a}") for a in activations for gate in ("sundew", "sundew-learn")]
    pairs += [("recipe", "dense"), ("infobatch", "dense")]
    return [p for p in (paired(results, a, b) for a, b in pairs) if p is not None]


def mean_of(rows: list[dict], key: str) -> float | None:
    """The mean of a numeric field over result rows that have it (None when none has)."""
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.fmean(vals) if vals else None


def joules(value: float | None) -> str:
    """Three significant figures at most: a quick run's 0.4 J and 1.3 J must not print as 0 and 1."""
    if value is None or value != value:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def paired_table(pairs: list[dict]) -> list[str]:
    """The paired differences of one scenario as markdown rows (a blank line first)."""
    lines = ["", "| paired difference (points) | seeds | mean | 95% CI | excludes 0 | FLOPs ratio |",
             "|---|---|---|---|---|---|"]
    for p in pairs:
        one = p["n"] < 2 or p["ci_low"] != p["ci_low"]       # one seed: no interval (its bounds are nan)
        interval = "n/a (1 seed)" if one else f"[{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]"
        lines.append(f"| {p['a']} − {p['b']} | {p['n']} | {p['diff_pts']:+.2f} | {interval} | "
                     f"{'-' if one else 'yes' if p['excludes_zero'] else 'no'} | {p['flops_ratio']:.3f} |")
    return lines


def tables(bench: dict) -> str:
    lines = []
    for scenario, by_method in bench["results"].items():
        dense = mean_of(by_method.get("dense", []), "flops_train") or 1
        lines += [f"### {scenario}: `--shift {bench['scenarios'][scenario]}`", "",
                  "| method | shifted test % | ± std | clean test % | train GFLOP | / dense | joules |",
                  "|---|---|---|---|---|---|---|"]
        for name, rows in by_method.items():
            if not rows:
                continue
            accs = [100 * r["test_acc"] for r in rows]
            std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
            clean = mean_of(rows, "clean_test_acc")
            flops = mean_of(rows, "flops_train")
            lines.append(f"| {name} | {statistics.fmean(accs):.2f} | {std:.2f} | "
                         f"{'-' if clean is None else f'{100 * clean:.2f}'} | {flops / 1e9:.1f} | "
                         f"{flops / dense:.3f} | {joules(mean_of(rows, 'energy_j'))} |")
        lines += paired_table(bench["comparisons"][scenario])
        lines.append("")
    lines += stopped_lines(bench.get("stopped"))
    return "\n".join(lines)


def plot(bench: dict, out: Path) -> list[Path]:
    """Accuracy against counted training FLOPs, one figure per scenario (mean over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for scenario, by_method in bench["results"].items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, rows in by_method.items():
            if not rows:
                continue
            x = (mean_of(rows, "flops_train") or 0) / 1e12
            y = 100 * mean_of(rows, "test_acc")
            marker = "s" if name.startswith("random") else ("*" if name == "recipe" else "o")
            ax.plot([x], [y], marker, markersize=9 if name == "recipe" else 6)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel("counted training TFLOP (mean over seeds)")
        ax.set_ylabel("shifted test accuracy %")
        ax.set_title(f"{scenario}: {bench['scenarios'][scenario]}", fontsize=9)
        ax.grid(alpha=0.3)
        path = out / f"accuracy-flops-{scenario}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(bench: dict, out: Path) -> dict:
    bench["comparisons"] = {s: comparisons(r, bench["activations"]) for s, r in bench["results"].items()}
    md = tables(bench)
    notes = [f"{len(bench['seeds'])} paired seeds {bench['seeds']}: per seed every method starts from the same "
             "warmup, split, shifted images, flipped labels and data order, and each sample gets the same crop "
             "and flip per epoch (drawn from seed, epoch and sample id, not from the gates' random stream).",
             "FLOPs are counted (torch.utils.flop_counter) for every training, scoring and BatchNorm "
             "re-estimation pass run, a per-condition bank's included; evaluation is excluded (the bank's joules: "
             "its FLOPs' share of the evaluations' joules, estimated).",
             f"Joules: training phase, {', '.join(sorted(bench['energy_methods'])) or 'not measured'}"
             + (" (an estimate from CPU time, not a measurement)." if "estimated" in bench["energy_methods"] else "."),
             "Accuracy is the last epoch's (keep last) on the shifted test set; clean test is the unshifted "
             "test set (forgetting)."]
    text = md + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    (out / "table.md").write_text(text)
    atomic_write_bytes(out / "bench.json", json.dumps(bench, indent=2, default=str).encode())   # whole or none
    figures = plot(bench, out)
    from edge_sel.report.markdown import bench_page
    (out / "report.html").write_text(bench_page("edge-sel bench adapt", md, [p.name for p in figures], notes))
    return {"table": text, "figures": figures}


def bench_record(args: dict, run: dict, methods: list[AdaptMethod]) -> dict:
    methods_used = {r.get("energy_method") for rows in run["results"].values() for rs in rows.values()
                    for r in rs} - {None}
    return {**args, "methods": [asdict(m) for m in methods], "results": run["results"], "wall_s": run["wall_s"],
            "energy_methods": sorted(methods_used), **({"partial": True, "stopped": run["stopped"]}
                                                       if run.get("stopped") else {})}
