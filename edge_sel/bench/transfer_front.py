"""bench transfer's planner rows: per planner budget the best fixed set that fits that budget (the fixed
method with the best mean device accuracy among those whose set fits it), run again under the same
budget as `best fixed@<fraction>`, the planner's paired difference against it; and the accuracy-joules
front of every row, with each point's memory and the planner's choice at each budget marked."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import torch

from edge_sel.bench.adapt import mean_of, paired
from edge_sel.bench.memory import SAME_NUMERICS, MemoryModel
from edge_sel.bench.stopping import BenchStop
from edge_sel.bench.bench_run import RAN, STOPPED
from edge_sel.bench.transfer import (CONDITIONS, FRACTIONS, REFERENCE, TransferSettings, _ran, method_row,
                                     sparse_plan)
from edge_sel.config import TrainConfig
from edge_sel.core.memory import MemoryCounter
from edge_sel.core.words import plural
from edge_sel.engine.machine.memory_plan import fit_shape, plan_memory, usable
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.methods.update.fixed_sets import bias_norm_names, classifier_names
from edge_sel.methods.update.lite_residual import residual_names
from edge_sel.models.lite_residual import add_residuals

BEST = "best fixed"


def fixed_sets(mm: MemoryModel, checkpoint: Path, batch_size: int, last_k: int) -> dict:
    """The fixed methods' trainable sets on the bench's model (lite-residual's on a copy with branches)."""
    model = mm.model
    head = classifier_names(model)
    norms = {f"{m}.{n}" if m else n for m, module in model.named_modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine
             for n, _ in module.named_parameters(recurse=False)}
    sparse = sparse_plan(mm, checkpoint, batch_size)[0]["trainable"]
    return {"classifier": head, "bn+classifier": head | norms, "bias+bn+classifier": bias_norm_names(model),
            "last-k": classifier_names(model, last_k), "sparse": set(sparse), REFERENCE: set(mm.everything)}


def lite_fits(mm: MemoryModel, budget_mb: float) -> bool:
    twin = copy.deepcopy(mm.model)
    add_residuals(twin, mm.input_shape)
    counter = MemoryCounter(twin, mm.input_shape, mm.counter.optimizer_factory, kernels=mm.counter.kernels)
    return fit_shape(counter, twin, mm.batch, usable(budget_mb), residual_names(twin), mm.shape.bn_statistics) is not None


def fixed_by_accuracy(results: dict, fitting: list[str]) -> list[str]:
    """The fitting sets that ran, the most accurate (mean over seeds) first."""
    return sorted((n for n in fitting if results.get(n)), key=lambda n: -mean_of(results[n], "test_acc"))


def run_best_fixed(s: TransferSettings, state: dict, last_k: int = 2, log=print, stop: BenchStop | None = None,
                   after_run=None) -> dict:
    """Per planner budget, the best fixed set that fits it run under that budget, every seed; adds
    `best fixed@<f>` results and `best_fixed` (what fitted, what was chosen) to the bench's state. Runs
    stop and refuse their budget as run_bench's do (named in "stopped" and "refused", not rows); a set
    whose every run refused the budget (the bench's count fitted it, the process's growth did not) is
    named in `refused_sets` and the next most accurate set runs instead. `after_run` gets the state
    after each run."""
    stop = stop or BenchStop()
    planners = [f for f in FRACTIONS if state["results"].get(f"planner@{f}")]
    if not planners or stop.stopped:
        return state
    base = TrainConfig(epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, device=s.device, **SAME_NUMERICS)
    mm = MemoryModel(s.checkpoint, base)
    sets = fixed_sets(mm, s.checkpoint, s.batch_size, last_k)
    by_name = {m.name: m for m in s.methods}
    state["best_fixed"] = {}
    for f in planners:
        budget = state["budgets_mb"][f"planner@{f}"]
        fitting = [n for n, names in sets.items() if mm.shape_for(names, budget) is not None]
        if "lite-residual" in state["results"] and lite_fits(mm, budget):
            fitting.append("lite-residual")
        entry = state["best_fixed"][f] = {"budget_mb": budget, "fitting": fitting, "method": None}
        name = f"{BEST}@{f}"
        for chosen in fixed_by_accuracy(state["results"], [n for n in fitting if n in by_name]):
            entry["method"] = chosen
            rows = state["results"][name] = []
            _run_fixed(s, state, mm, sets, by_name[chosen], f, budget, rows, stop, log, after_run)
            if rows or stop.stopped:
                break
            # Every run refused: its refusals are kept under the set's name, and the next set runs.
            entry.setdefault("refused_sets", []).append(chosen)
            state["refused"][f"{name} ({chosen})"] = state["refused"].pop(name, [])
            entry["method"] = None
        if stop.stopped:
            break
    state["stopped"] = stop.describe()
    return state


def _run_fixed(s, state, mm, sets, m, f: str, budget: float, rows: list, stop: BenchStop, log, after_run) -> None:
    """Set `m` run under `budget` on every seed of the bench, its rows appended to `rows`."""
    name, plan = f"{BEST}@{f}", None
    if m.sparsity == "budget":        # the sparse update: its set, planned under this budget
        plan = plan_memory(mm.counter, mm.model, s.batch_size, budget, sets[m.name], mm.shape.bn_statistics)
        plan.trainable = sorted(sets[m.name])
        plan = plan.to_json()
    for start in state["results"]["start"]:
        seed = start["seed"]
        data = DataOptions(**{**vars(s.data), "shift": CONDITIONS[s.condition], "shift_seed": seed})
        data.__dict__.pop("_source", None)
        cfg = TrainConfig(epochs=s.epochs, lr=m.config.get("lr", s.lr), seed=seed, device=s.device, batch_size=s.batch_size,
                          val_subset=s.val_subset, keep="last", checkpoint_every=0, eval_batch_size=s.batch_size,
                          bn_momentum=None if m.bn_stats == "frozen" else s.bn_momentum, strategy=m.strategy, sparsity=m.sparsity,
                          bn_stats=m.bn_stats, method=dict(m.method), evaluate_start=False, memory_budget_mb=budget,
                          memory_plan=plan, explicit=["lr", "bn_stats", "sparsity"], **SAME_NUMERICS)
        run_dir = s.out / "runs" / f"best-fixed-{f.replace('/', '-')}-{m.name.replace('+', '-')}" / f"seed{seed}"
        done = _ran(stop, s, data, cfg, run_dir, name, seed, state.setdefault("refused", {}), log)
        if done == STOPPED:
            break
        if done == RAN:
            row = method_row(run_dir, seed, start, mm.full_mb, s.own_process)
            rows.append(row)
            log(f"  seed {seed} {name} ({m.name}) test {row['test_acc']:.4f} under {budget:.1f} MiB")
        if after_run is not None:
            after_run(state)


def planner_choice(rows: list[dict]) -> str | None:
    """The candidate a planner row's runs chose most often (their plans' records)."""
    chosen = []
    for r in rows:
        try:
            plan = json.loads((Path(r["run_dir"]) / "config.json").read_text()).get("memory_plan") or {}
        except (OSError, ValueError):
            continue
        chosen.append((plan.get("gains") or {}).get("chosen"))
    chosen = [c for c in chosen if c]
    return Counter(chosen).most_common(1)[0][0] if chosen else None


def front_points(bench: dict) -> list[dict]:
    """Each row's point of the accuracy-joules front (means over seeds): accuracy, training joules, its
    largest counted and measured peaks, whether it is on the front (no row more accurate at fewer
    joules), and for a planner row the set its runs chose; `label` names it with its memory."""
    results = bench["results"]
    points = []
    for name, rows in results.items():
        acc, j = mean_of(rows, "test_acc"), mean_of(rows, "energy_j")
        if name == "start" or acc is None or j is None:
            continue
        measured = [r["measured_peak_mb"] for r in rows if isinstance(r.get("measured_peak_mb"), (int, float))]
        counted = [r["counted_peak_mb"] for r in rows if isinstance(r.get("counted_peak_mb"), (int, float))]
        points.append({"name": name, "acc": acc, "joules": j, "counted_mb": max(counted, default=None),
                       "measured_mb": max(measured, default=None), "wall_s": mean_of(rows, "train_wall_s"),
                       "choice": planner_choice(rows) if name.startswith("planner@") else None})
    for p in points:
        p["front"] = not any(q["acc"] > p["acc"] and q["joules"] < p["joules"] for q in points)
        memory = "" if p["counted_mb"] is None else f", {p['counted_mb']:.0f} MiB"
        p["label"] = f"{p['name']}{': ' + p['choice'] if p['choice'] else ''}{memory}"
    return sorted(points, key=lambda p: p["joules"])


def front_lines(bench: dict) -> list[str]:
    """The accuracy-joules front (front_points) as a table; then per budget the planner against the best
    fixed set that fits it."""
    results = bench["results"]
    points = front_points(bench)
    if not points:
        return []
    lines = ["", "Accuracy against joules (means over seeds; on the front where no row scores more at fewer "
                 "joules; the planner's choice is what its runs' plans chose):", "",
             "| method | device test % | joules | train s | counted peak MiB | measured peak MiB | front | planner chose |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        wall, counted, measured = p["wall_s"], p["counted_mb"], p["measured_mb"]
        lines.append(f"| {p['name']} | {100 * p['acc']:.2f} | {p['joules']:,.0f} | {'-' if wall is None else f'{wall:.1f}'} | "
                     f"{'-' if counted is None else f'{counted:.1f}'} | {'-' if measured is None else f'{measured:.1f}'} | "
                     f"{'yes' if p['front'] else ''} | {p['choice'] or ''} |")
    best = bench.get("best_fixed") or {}
    if best:
        lines += ["", "The planner against the best fixed set that fits its budget, run under the same budget "
                      "(paired over seeds, 95% interval):", "",
                  "| budget | MiB | fixed sets that fit | best of them | planner − it (points) | joules planner / it |",
                  "|---|---|---|---|---|---|"]
        for f, b in best.items():
            d = paired(results, f"planner@{f}", f"{BEST}@{f}") if b["method"] else None
            ja, jb = mean_of(results.get(f"planner@{f}", []), "energy_j"), mean_of(results.get(f"{BEST}@{f}", []), "energy_j")
            diff = "-" if d is None else (f"{d['diff_pts']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]" if d["n"] > 1
                                          else f"{d['diff_pts']:+.2f} (1 seed)")
            ratio = f"{ja / jb:.2f}x" if ja and jb else "-"
            refused = len((bench.get("refused") or {}).get(f"{BEST}@{f}", []))
            chosen = (b["method"] or (f"differs between the benches merged ({', '.join(map(str, b['split']))})"
                                      if b.get("split") else "-")) \
                + (f" (refused its budget on {plural(refused, 'seed')})" if refused else "") \
                + "".join(f"; {r} refused its budget on every seed" for r in b.get("refused_sets", []))
            lines.append(f"| {f} | {b['budget_mb']:.1f} | {', '.join(b['fitting']) or 'none'} | {chosen} | "
                         f"{diff} | {ratio} |")
    return lines

