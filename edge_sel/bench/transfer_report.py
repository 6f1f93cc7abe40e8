"""bench transfer's table, paired differences, figure and published rows: table.md, results.json and
report.html in the bench's --out."""

from __future__ import annotations

from pathlib import Path

from edge_sel.bench.adapt import joules, mean_of, paired, paired_table
from edge_sel.bench.bench_run import refused_fit, refused_lines
from edge_sel.bench.memory import measured_peak_words
from edge_sel.bench.outputs import write_bench_files
from edge_sel.bench.published import TRANSFER_PUBLISHED
from edge_sel.bench.stopping import stopped_lines
from edge_sel.bench.transfer import CONDITIONS, FULL_FT, START, named_pairs
from edge_sel.bench.transfer_front import front_lines, front_points


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _diff(d: dict | None) -> str:
    if d is None:
        return "-"
    return f"{d['diff_pts']:+.2f} " + (f"[{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]" if d["n"] > 1
                                       else "(1 seed: no interval)")


def _all_in(r: dict) -> str:
    """A row's mean all-in joules and, paired with the best row's, its ratio with a 95% interval."""
    d = r.get("vs_best") or {}
    if d.get("joules_ratio") is None:
        return joules(r.get("energy_all_j"))
    interval = "" if d["joules_ci_low"] != d["joules_ci_low"] else f" [{d['joules_ci_low']:.2f}, {d['joules_ci_high']:.2f}]"
    return f"{joules(r.get('energy_all_j'))} ({d['joules_ratio']:.2f}x{interval})"


def _budget(r: dict) -> str:
    """A planned row's budget and what its plan runs: the tensors it trains, the micro-batch."""
    if r.get("budget_mb") is None:
        return "-"
    plan = [f"{r['trained_tensors']} tensors" if r.get("trained_tensors") else None,
            f"micro-batch {r['micro_batch']}" if r.get("micro_batch") else None]
    said = ", ".join(p for p in plan if p)
    return f"{r['budget_mb']:.1f}" + (f" ({said})" if said else "")


def ran_statistics(rows: list[dict], chooser: str = "plan") -> str | None:
    """A row that leaves the statistics to its runs (the planner's, the default's): the modes they ran
    in, as chosen."""
    modes = sorted({r["bn_stats"] for r in rows if r.get("bn_stats")})
    return f"{'/'.join(modes)} ({chooser})" if modes else None


def statistics_of(method: dict, rows: list[dict]) -> str | None:
    """A row's statistics mode: its own, or where its runs choose them (the planner's, the default's),
    what they ran."""
    if method.get("bn_stats"):
        return method["bn_stats"]
    if method.get("fraction"):
        return ran_statistics(rows) or "per the plan"
    if method.get("sparsity") == "auto":
        return ran_statistics(rows, "its choice") or "its choice"
    return None


def references(bench: dict) -> tuple[str | None, str | None]:
    """The better of the two full fine-tuning rows (statistics re-estimated, frozen) and the best row,
    by mean device test accuracy over the seeds (the start aside)."""
    results = bench["results"]
    means = {name: mean_of(rs, "test_acc") for name, rs in results.items() if rs and name != START}
    means = {k: v for k, v in means.items() if v is not None}
    full = [n for n in FULL_FT if n in means]
    return (max(full, key=means.get) if full else None), (max(means, key=means.get) if means else None)


def rows_of(bench: dict) -> list[dict]:
    """One row per method (the start first): means over seeds, and the paired differences (accuracy
    and all-in joules) against the better full fine-tuning row and against the best row."""
    results, out = bench["results"], []
    full, best = references(bench)
    bench["reference"], bench["best"] = full, best
    for m in [{"name": START, "note": "the checkpoint, evaluated once per seed"}, *bench["methods"]]:
        name = m["name"]
        fit = bench["fits"].get(name, {"fits": True})
        rs, refused = results.get(name, []), (bench.get("refused") or {}).get(name, [])
        fit = refused_fit(fit, rs, refused)     # its runs refused the budget the bench's count said fits
        row = {"method": name, "bn_stats": statistics_of(m, rs), "recipe": m.get("recipe", ""), "note": m.get("note", ""), "fits": fit["fits"], "needs_mb": fit.get("needs_mb"),
               "budget_mb": bench["budgets_mb"].get(name), "seeds": len(rs), "refused_seeds": [r["seed"] for r in refused]}
        if rs:
            row.update({"test_acc": mean_of(rs, "test_acc"), "clean_test_acc": mean_of(rs, "clean_test_acc"),
                        "forgetting_pts": mean_of(rs, "forgetting_pts"),
                        "counted_peak_mb": max((r["counted_peak_mb"] for r in rs if r.get("counted_peak_mb")),
                                               default=None),
                        "measured_peak_mb": mean_of(rs, "measured_peak_mb"), "flops_train": mean_of(rs, "flops_train"),
                        "energy_j": mean_of(rs, "energy_j"), "train_wall_s": mean_of(rs, "train_wall_s"),
                        "energy_all_j": mean_of(rs, "energy_all_j"), "lr": mean_of(rs, "lr"),
                        "chose": sorted({r["chose"] for r in rs if r.get("chose")}),
                        "vs_full": paired(results, name, full) if full and name not in (full, START) else None,
                        "vs_best": paired(results, name, best) if best and name not in (best, START) else None,
                        "micro_batch": rs[0].get("micro_batch"), "trained_tensors": rs[0].get("trained_tensors")})
        out.append(row)
    return out


def pairs_of(bench: dict) -> list[dict]:
    names = [n for n, rs in bench["results"].items() if rs]
    found = [paired(bench["results"], a, b) for a, b in named_pairs(names)]
    return [p for p in found if p is not None]


def table(bench: dict) -> str:
    lines = [f"{bench['model']} at {'x'.join(map(str, bench['input_shape']))}, condition {bench['condition']}"
             + (f" (`--shift {CONDITIONS[bench['condition']]}`)" if CONDITIONS[bench["condition"]] else "")
             + f"; full fine-tuning's counted peak {bench['full_ft_counted_mb']:.1f} MiB (batch {bench['batch_size']})",
             "", f"Every row at its own recipe (its column). Reference of the paired differences: {bench['reference']} (the "
             f"better full fine-tuning row); best row: {bench['best']}. Joules all in: training, evaluation and planning.",
             "", "| method | BN statistics | recipe | device test % | − full FT* (points, 95% CI) | − best (points, 95% CI) | "
             "joules all in (x best, 95% CI) | clean test % | forgetting (points) | budget MiB (plan) | counted peak MiB | "
             "measured peak MiB | train GFLOP | training joules | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench["rows"]:
        if not r["fits"]:
            said = ": the run refused its budget" if r["refused_seeds"] else ""
            lines.append(f"| {r['method']} | {r['bn_stats']} | {r['recipe']} | does not fit {_num(r['budget_mb'])} MiB (needs "
                         f"{_num(r['needs_mb'])} MiB){said} | - | - | - | - | - | - | - | - | - | - | - |")
            continue
        if "test_acc" not in r:
            continue
        if r["method"] == START:
            lines.append(f"| {START} | - | - | {_pts(r['test_acc'])} | - | - | - | {_pts(r['clean_test_acc'])} | reference | "
                         "- | - | - | - | - | - |")
            continue
        diff = "reference" if r["method"] == bench["reference"] else _diff(r["vs_full"])
        to_best = "best" if r["method"] == bench["best"] else _diff(r["vs_best"])
        recipe = r["recipe"] + (f": chose {', '.join(r['chose'])}, lr {r['lr']:.3g}" if r["chose"] else "")
        refused = f"; {len(r['refused_seeds'])} refused its budget" if r["refused_seeds"] else ""
        fewer = f" ({r['seeds']} of {len(bench['seeds'])} seeds{refused})" if r["seeds"] < len(bench["seeds"]) else ""
        lines.append(f"| {r['method']}{fewer} | {r['bn_stats']} | {recipe} | {_pts(r['test_acc'])} | {diff} | {to_best} | "
                     f"{_all_in(r)} | {_pts(r['clean_test_acc'])} | "
                     f"{_num(r['forgetting_pts'], '+.2f')} | {_budget(r)} | {_num(r['counted_peak_mb'])} | "
                     f"{_num(r['measured_peak_mb'])} | {_num((r['flops_train'] or 0) / 1e9)} | "
                     f"{joules(r['energy_j'])} | {_num(r['train_wall_s'])} |")
    pairs = bench["pairs"]
    if pairs:
        lines += paired_table(pairs)
    lines += refused_lines(bench.get("refused"))
    lines += stopped_lines(bench.get("stopped"))
    return "\n".join(lines) + "\n"


def published_table(bench: dict) -> str:
    """The field's CIFAR-10 rows, and what differs from this bench's."""
    ours = (f"{bench['model']}, {bench['input_shape'][-1]} px, {bench['epochs']} epoch(s), "
            f"{bench['data'].get('subset') or 'all'} images of shard {bench['data'].get('shard')}")
    lines = ["", "Published CIFAR-10 transfer rows (memory counted as each paper counts it: compare memory within a "
             f"paper, not with ours). This bench: {ours}.", "",
             "| ours | published method | CIFAR-10 % | memory | backbone | px | epochs | data | source | "
             "matches ours in | differs from ours in |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = {m["name"]: m.get("note", "") for m in bench["methods"]}
    for p in TRANSFER_PUBLISHED:
        differs = p["differs"] + (f"; ours trains {notes['last-k'].split(': ', 1)[-1]}"
                                  if p["method"] == "last-k" and "last-k" in notes else "")
        lines.append(f"| {p['method']} | {p['as']} | {p['acc']} | {p['memory']} ({p['memory_kind']}) | {p['backbone']} | "
                     f"{p['resolution']} | {p['epochs']} | {p['data']} | {p['source']} | {p['matches']} | {differs} |")
    return "\n".join(lines) + "\n"


def plot(bench: dict, out: Path) -> list[Path]:
    """Accuracy against counted memory, and against joules with the front and the planner's choices."""
    from edge_sel.report.plots import accuracy_joules, accuracy_memory
    points = [(r["counted_peak_mb"], 100 * r["test_acc"], r["method"]) for r in bench["rows"]
              if r.get("test_acc") is not None and r.get("counted_peak_mb")]
    title = f"{bench['model']} {bench['input_shape'][-1]} px, {bench['condition']}"
    return [accuracy_memory(points, out / "accuracy-memory.png", title, "counted training peak, MiB (log)",
                            "device test accuracy % (mean over seeds)"),
            accuracy_joules(front_points(bench), out / "accuracy-joules.png", title)]


def notes_of(bench: dict) -> list[str]:
    measured = sorted({r.get("measure_method") for rs in bench["results"].values() for r in rs} - {None})
    sparse = bench.get("sparse")
    return [
        f"{len(bench['seeds'])} paired seeds {bench['seeds']}: per seed every method starts from the same checkpoint, "
        "split, corrupted images and data order. The start is evaluated once per seed (a fine-tune of no epoch); "
        "no method evaluates it again." + (" Written after each run while the bench ran: the runs done so far (a "
                                           "row with fewer seeds says how many)." if bench.get("partial") else ""),
        "Device test: the device shard's test images under the condition; clean test: the same images without it. "
        "Forgetting: the start's clean test accuracy minus the method's (points), per seed, averaged.",
        "Counted peak: the runs' records (core/memory.py on the meta device: weights, optimizer state, batch, saved "
        "activations, gradients, transients; the datasets come on top). Measured peak: " +
        (measured_peak_words(measured) + "." if measured else "not measured (-): every run in one process."),
        "FLOPs are counted (torch.utils.flop_counter) for every training pass run and, for per-condition rows, "
        "the bank's re-estimation passes (the runs charge them to evaluation; their joules are estimated as their "
        "FLOPs' share of the evaluations'); evaluation is not in them. "
        f"Joules: training, {', '.join(bench['energy_methods']) or 'not measured'}"
        + (" (an estimate from CPU time, not a measurement)." if "estimated" in bench["energy_methods"] else "."),
        "BN statistics: frozen (running statistics used, never written: TinyTL's FT-Last and FT-Norm+Last move "
        "none), reestimate (batch statistics; the running ones move at the momentum below), per-condition (a bank "
        "per condition, each test batch normalised with its nearest condition's). "
        f"Momentum of re-estimated statistics: {bench['bn_momentum'] if bench['bn_momentum'] is not None else 'the model’s own'}. "
        "Every run trains and evaluates in fp32 in the contiguous layout (memory is counted for them).",
        *([f"Merged from {bench['merged_from']} benches of other seeds run at the same time on one machine "
           "(benchmarks/merge_bench_transfer.py): each run's wall time and joules were taken while the others ran (a GPU's "
           "meter reads the whole card), so they compare poorly across rows; accuracy, counted memory and FLOPs are "
           "each run's own."] if bench.get("merged_from", 1) > 1 else []),
        *([f"sparse: {sparse['tensors']} tensors, {sparse['parameters']:,} parameters ({sparse['share']:.1%}); "
           f"blocks ranked by {sparse['gains']}."] if sparse else []),
        *[f"{m['name']}: {m['note']}" for m in bench["methods"] if m.get("note")],
    ]


def write_outputs(bench: dict, out: Path, figure: bool = True) -> dict:
    """table.md and results.json, then (with `figure`) the accuracy-memory and accuracy-joules figures
    and report.html."""
    bench["rows"] = rows_of(bench)
    bench["pairs"] = pairs_of(bench)
    md = table(bench) + "\n".join(front_lines(bench)) + "\n" + published_table(bench)
    notes = notes_of(bench)
    return write_bench_files(out, "transfer", md, notes, bench, (lambda: plot(bench, out)) if figure else None,
                             json_name="results.json")
