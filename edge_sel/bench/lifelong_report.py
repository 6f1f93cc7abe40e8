"""What `bench lifelong` leaves in OUT: table.md (per night, at the end, the single-night references,
the aims, paired differences), results.json, lifelong.png (accuracy per domain across nights) and
report.html (the tables and the figure as one page)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from edge_sel.bench.adapt import joules, paired, paired_table
from edge_sel.bench.lifelong import SERVER
from edge_sel.bench.stopping import stopped_lines

AIM_POINTS = 1.0            # within 1 point of the warmup (clean) and of the single-night references
AIM_FLOPS = 0.3             # at most 0.3x dense nightly fine-tuning's counted training FLOPs


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def night_means(lives: list[dict], night: int, keys: list[str]) -> dict:
    """Mean over seeds of one night's accuracies (points), forgetting (points), average and costs."""
    rows = [life["nights"][night] for life in lives]
    first = rows[0]
    out = {"night": night, "condition": first["condition"],
           "acc": {d: 100 * _mean(r["acc"][d] for r in rows) for d in keys},
           "forgetting": {d: _mean(r["forgetting"].get(d) for r in rows) for d in keys} if night else {},
           "average": 100 * _mean(r["average"] for r in rows),
           "promoted": sum(1 for r in rows if r.get("promoted")), "seeds": len(rows)}
    if all(r.get("acc_frames") for r in rows):      # the same images as a camera's stream
        out["acc_frames"] = {d: 100 * _mean(r["acc_frames"][d] for r in rows) for d in rows[0]["acc_frames"]}
    for k in ("flops_train", "flops_all", "energy_j"):
        out[k] = _mean(r.get(k) for r in rows)
    return out


def summarise(result: dict) -> dict:
    """Per method: the per-night means, the final night's, the life's totals (mean over seeds)."""
    keys = result["domains"] + [SERVER]
    out = {}
    for name, lives in result["lives"].items():
        if not lives:
            continue
        nights = [night_means(lives, i, keys) for i in range(len(lives[0]["nights"]))]
        totals = {k: _mean(life["totals"][k] for life in lives)
                  for k in ("flops_train", "flops_eval", "flops_all", "energy_j", "wall_s")}
        totals["energy_methods"] = sorted({m for life in lives for m in life["totals"]["energy_methods"]})
        out[name] = {"nights": nights, "final": nights[-1], "totals": totals}
    return out


def references(result: dict) -> dict:
    """Per corrupted domain: each reference method's mean accuracy and the mean of the per-seed best."""
    out = {}
    for d, ref in result["references"].items():
        out[d] = {"condition": ref["condition"], "night": ref["night"],
                  "methods": {n: 100 * _mean(r["acc"] for r in rows) for n, rows in ref["methods"].items()},
                  "best": 100 * _mean(ref["best_per_seed"].values())}
    return out


def aims(summary: dict, refs: dict, start: dict, corrupted: list[str]) -> dict:
    """The three aims per method: clean server test within 1 point of the warmup, each corrupted
    domain within 1 point of its best single-night adaptation, training FLOPs <= 0.3x dense's."""
    # A bench stopped before its references has no bar for a domain: that aim is not met.
    references_ran = set(corrupted) <= set(refs)
    dense = (summary.get("dense") or {}).get("totals", {}).get("flops_train")
    dense_all = (summary.get("dense") or {}).get("totals", {}).get("flops_all")
    out = {}
    for name, s in summary.items():
        final = s["final"]["acc"]
        clean_gap = final[SERVER] - 100 * start[SERVER]
        domain_gaps = {d: final[d] - r["best"] for d, r in refs.items()}
        ratio = None if not dense else s["totals"]["flops_train"] / dense
        out[name] = {"clean_gap": clean_gap, "clean_ok": clean_gap >= -AIM_POINTS,
                     "domain_gaps": domain_gaps,
                     "domains_ok": references_ran and all(g >= -AIM_POINTS for g in domain_gaps.values()),
                     "flops_ratio": ratio, "flops_ok": ratio is not None and ratio <= AIM_FLOPS,
                     # Beside it, all in: a method whose adaptation runs in evaluation (--bn-conditions) shows there.
                     "flops_all_ratio": None if not dense_all else s["totals"]["flops_all"] / dense_all}
        out[name]["all_ok"] = out[name]["clean_ok"] and out[name]["domains_ok"] and out[name]["flops_ok"]
    return out


def final_rows(result: dict) -> dict:
    """Per method, per seed: the final domain average (as adapt.paired reads `test_acc`) and the
    life's counted training FLOPs."""
    return {name: [{"seed": life["seed"], "test_acc": life["nights"][-1]["average"],
                    "flops_train": life["totals"]["flops_train"]} for life in lives]
            for name, lives in result["lives"].items() if lives}


def comparisons(result: dict) -> list[dict]:
    rows = final_rows(result)
    pairs = [(m, base) for base in ("dense", "recipe") for m in rows if m != base]
    return [p for p in (paired(rows, a, b) for a, b in pairs) if p is not None]


def _pts(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _gflop(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e9:,.2f}"


def tables(result: dict, summary: dict, refs: dict, aim: dict, pairs: list[dict]) -> str:
    doms = result["domains"]
    keys = doms + [SERVER]
    heads = [f"{d} %" for d in doms] + ["average %", "server clean test %"]
    lines = ["### After every night (mean over seeds)", "",
             "| night | condition | method | " + " | ".join(heads) + " | " +
             " | ".join(f"forgot {d}" for d in keys) + " | promoted | GFLOP train | GFLOP all in | joules all in |",
             ]
    lines.append(_rule(lines[-1]))
    names = list(summary)
    for i in range(len(summary[names[0]]["nights"]) if names else 0):
        for name in names:
            n = summary[name]["nights"][i]
            if i == 0 and name != names[0]:
                continue            # the start is the same warmup for every method
            label = "start (warmup)" if i == 0 else name
            promoted = f"{n['promoted']}/{n['seeds']}"
            lines.append(f"| {i} | {n['condition']} | {label} | " + " | ".join(_pts(n['acc'][d]) for d in doms)
                         + f" | {_pts(n['average'])} | {_pts(n['acc'][SERVER])} | "
                         + " | ".join(_pts(n['forgetting'].get(d)) if i else "-" for d in keys)
                         + f" | {promoted if i else '-'} | {_gflop(n['flops_train'])} | "
                         f"{_gflop(n['flops_all'])} | {joules(n['energy_j']) if i else '-'} |")
    dense = (summary.get("dense") or {}).get("totals", {}).get("flops_train")
    lines += ["", "### At the end of the schedule (mean over seeds; totals: sums over the nights)", "",
              "| method | " + " | ".join(heads) + " | " + " | ".join(f"forgot {d}" for d in keys)
              + " | GFLOP train | / dense | GFLOP all in | joules all in |"]
    lines.append(_rule(lines[-1]))
    for name in names:
        f, t = summary[name]["final"], summary[name]["totals"]
        ratio = "-" if not dense else f"{t['flops_train'] / dense:.3f}"
        lines.append(f"| {name} | " + " | ".join(_pts(f['acc'][d]) for d in doms)
                     + f" | {_pts(f['average'])} | {_pts(f['acc'][SERVER])} | "
                     + " | ".join(_pts(f['forgetting'].get(d)) for d in keys)
                     + f" | {_gflop(t['flops_train'])} | {ratio} | {_gflop(t['flops_all'])} | "
                     f"{joules(t['energy_j'])} |")
    framed = [name for name in names if summary[name]["final"].get("acc_frames")]
    if framed:
        batch = result.get("predict_batch", 1)
        lines += ["", f"### The deployed model at the end, as a device asks it (mean over seeds): whole batches "
                      f"against a camera's stream, {batch} image{'s' if batch != 1 else ''} a call "
                      "(segments of 250 frames cycling the domains, classes in runs of 30)", "",
                  "| method | " + " | ".join(f"{d} batches % | {d} stream %" for d in doms) + " |",
                  "|" + "---|" * (1 + 2 * len(doms))]
        for name in framed:
            f = summary[name]["final"]
            lines.append(f"| {name} | " + " | ".join(f"{_pts(f['acc'][d])} | {_pts(f['acc_frames'].get(d))}"
                                                     for d in doms) + " |")
    if refs:
        methods = list(next(iter(refs.values()))["methods"])
        lines += ["", "### Single-night references: the warmup adapted once to the domain alone", "",
                  "| domain | night (condition) | " + " | ".join(f"{m} %" for m in methods)
                  + " | best per seed, mean % |",
                  "|" + "---|" * (3 + len(methods))]
        for d, r in refs.items():
            lines.append(f"| {d} | {r['night']} ({r['condition']}) | "
                         + " | ".join(_pts(r['methods'][m]) for m in methods) + f" | {_pts(r['best'])} |")
    lines += ["", f"### Aims (at the end; within {AIM_POINTS:g} point, training FLOPs <= {AIM_FLOPS:g}x dense)", "",
              "| method | server clean − warmup (points) | " + " | ".join(f"{d} − best single night" for d in refs)
              + " | train FLOPs / dense | all three | all-in FLOPs / dense |", "|" + "---|" * (5 + len(refs))]
    for name, a in aim.items():
        mark = lambda ok: "yes" if ok else "no"     # noqa: E731
        lines.append(f"| {name} | {a['clean_gap']:+.2f} ({mark(a['clean_ok'])}) | "
                     + " | ".join(f"{g:+.2f}" for g in a["domain_gaps"].values())
                     + (" | " if refs else "") + ("-" if a["flops_ratio"] is None else
                                                 f"{a['flops_ratio']:.3f} ({mark(a['flops_ok'])})")
                     + f" | {mark(a['all_ok'])} | "
                     + ("-" if a.get("flops_all_ratio") is None else f"{a['flops_all_ratio']:.3f}") + " |")
    if pairs:
        lines += ["", "### Paired differences of the final domain average (points) against dense and the recipe"]
        lines += paired_table(pairs)
    return "\n".join(lines)


def plot(result: dict, summary: dict, path: Path) -> Path:
    """Accuracy per domain across nights: one panel per domain (and the server's test), a line per
    method (mean over seeds); the x axis names each night's condition."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from edge_sel.report.plots import DPI, PALETTE
    keys = result["domains"] + [SERVER]
    fig = Figure(figsize=(3.6 * len(keys) + 1.6, 3.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    names = list(summary)
    ticks = [n["condition"] if i else "start" for i, n in enumerate(summary[names[0]]["nights"])] if names else []
    # Methods often score alike (two that kept the warmup on a night draw one line): each is shifted a
    # little along x and has its own marker and dash, so none hides under another.
    markers, dashes = "osD^vPX*", ["-", "--", "-.", ":"]
    width = 0.3
    for ax, d in zip(axes, keys):
        for k, name in enumerate(names):
            ys = [n["acc"][d] for n in summary[name]["nights"]]
            dodge = (k - (len(names) - 1) / 2) * width / max(len(names) - 1, 1)
            ax.plot([i + dodge for i in range(len(ys))], ys, marker=markers[k % len(markers)], markersize=4,
                    linestyle=dashes[k % len(dashes)], color=PALETTE[k % len(PALETTE)], label=name,
                    linewidth=2.2 if name == "lifelong" else 1.2, mfc="none" if k % 2 else None,
                    zorder=3 + len(names) - k)
        ax.set_title("server clean test" if d == SERVER else d, fontsize=9)
        ax.set_xticks(range(len(ticks)), ticks, rotation=45, fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy % of the deployed model")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="method")
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def notes(result: dict, settings: dict) -> list[str]:
    kinds = sorted({k for lives in result["lives"].values() for life in lives
                    for k in life["totals"]["energy_methods"]})
    out = [f"{len(settings['seeds'])} paired seeds {settings['seeds']}: one warmup; a seed sets every night's "
           "fine-tune "
           "seed, shift seed and image draw, the same for every method.",
           "A night is the nightly path: fine-tune from the deployed model (the warmup while none is deployed) on "
           "tonight's local data, then promote; 'promoted' counts the seeds whose run replaced the deployed model.",
           f"Accuracy is the deployed model's after the night, measured by the bench (not by the device, and in no "
           f"total) on {', '.join(f'{d}: {n:,}' for d, n in result['evaluation_sizes'].items())} images; "
           "'forgot D' is the best accuracy domain D ever had for that method (the start included) minus the current.",
           "FLOPs are counted (torch.utils.flop_counter) for the passes actually run. 'train': training, scoring and "
           "BatchNorm re-estimation passes; 'all in' adds every evaluation the device ran (its baseline, each "
           "epoch's validation, the run's test passes) and promote's check of the deployed model.",
           "Joules all in: the runs' metered training and evaluation windows ("
           + (", ".join(kinds) or "not measured")
           + ("; an estimate from CPU time, not a measurement" if "estimated" in kinds else "")
           + "), promote's check of the deployed model in its own window.",
           f"The bench's own evaluations cost {result['bench_eval_flops'] / 1e9:,.1f} GFLOP (counted, outside every "
           "device's totals)."]
    if settings.get("skipped"):
        out.append("Not run: " + "; ".join(f"{k} ({v})" for k, v in settings["skipped"].items()) + ".")
    return out


def write_outputs(result: dict, settings: dict, out: Path) -> dict:
    summary = summarise(result)
    refs = references(result)
    aim = aims(summary, refs, result["start"], result["domains"][1:])
    pairs = comparisons(result)
    md = tables(result, summary, refs, aim, pairs) + "\n".join(stopped_lines(result.get("stopped")))
    text = md + "\n\n" + "\n".join(f"- {n}" for n in notes(result, settings)) + "\n"
    (out / "table.md").write_text(text)
    figure = plot(result, summary, out / "lifelong.png")
    from edge_sel.report.markdown import bench_page
    (out / "report.html").write_text(bench_page("edge-sel bench lifelong", md, [figure.name],
                                                notes(result, settings)))
    record = {**settings, **result, "summary": summary, "reference_means": refs, "aims": aim, "comparisons": pairs}
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    return {"table": text, "figure": figure, "results": out / "results.json", "aims": aim}
