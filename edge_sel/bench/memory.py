"""`edge-sel bench memory`: adapting a warmup to a device's shifted data under memory budgets.

Budgets are fractions of full fine-tuning's counted peak (core/memory.py: weights, optimizer state,
the batch, and at the high-water mark the saved activations, gradients and transients; the datasets
come on top), counted on the meta device for the warmup's model, input size, batch size and optimizer.
At each budget: full fine-tuning planned to fit (recomputed blocks, micro-batches), the classifier
alone, the last k blocks (the most that fit in micro-batches of 8 or more), biases and norms, `layers`, `rgn` and the planner (`--sparsity budget`); unbudgeted full fine-tuning is the
reference. A method that cannot fit a budget is not run: its row says so, with the smallest budget it
needs; so does a row whose runs refused their budget (bench/bench_run.py), and the bench goes on.
Seeds pair as in bench adapt (same warmup, split, shift, data order and augmentation per seed).

Each run trains in a process of its own (spawned), so that its measured peak, the growth of the
resident high-water mark over the level before training, is its own: in one process a run reuses the
pages earlier runs freed and measures next to nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from edge_sel.bench.adapt import SCENARIOS, joules, mean_of, outcome, paired, paired_table
from edge_sel.bench.bench_run import RAN, STOPPED, refused_fit, refused_lines, run_one
from edge_sel.bench.outputs import write_bench_files
from edge_sel.bench.stopping import BenchStop, stopped_lines
from edge_sel.config import TrainConfig
from edge_sel.core.memory import MiB
from edge_sel.core.records import read_records
from edge_sel.core.words import plural
from edge_sel.engine.loop.step_memory import memory_counter, rows_a_step_carries
from edge_sel.engine.machine.device import pick_device
from edge_sel.engine.machine.memory_plan import MIN_CHUNK_FOR_EVERYTHING, fit_shape, smallest_budget, usable
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.errors import InputError
from edge_sel.methods.update.fixed_sets import bias_norm_names, classifier_names
from edge_sel.models import load_checkpoint
from edge_sel.models.blocks import named_blocks

FRACTIONS = ("1/2", "1/4", "1/10", "1/30")
# last-k trains the most blocks that fit in micro-batches of this many images or more: the planner's own
# floor for training everything.
MIN_LAST_K_CHUNK = MIN_CHUNK_FOR_EVERYTHING
REFERENCE = "full FT"
# Method name -> the --sparsity it runs with under a budget.
METHODS = {"full FT planned": "none", "classifier": "classifier", "last-k": "last-k", "bias-norm": "bias-norm",
           "layers": "layers", "rgn": "rgn", "planner": "budget"}


# Every run trains and evaluates in fp32 and the contiguous layout, as a budgeted run does (memory is
# counted for fp32): left to measure its own precision, the unbudgeted reference trained in bf16 on a
# CPU with bf16 kernels, and the paired differences then mixed precision with memory. Evaluation runs
# a training batch at a time, as a budgeted run's does (the reference's larger evaluation batches took
# 8 times as long per image for mobilenetv2 at 96 px on a CPU).
SAME_NUMERICS = {"precision": "fp32", "eval_precision": "fp32", "memory_format": "contiguous"}


def parse_fractions(text: str | None, option: str = "--budgets") -> list[str]:
    if text is None:
        return list(FRACTIONS)
    out = []
    for part in text.split(","):
        try:
            value = Fraction(part.strip())
        except (ValueError, ZeroDivisionError):
            raise InputError(f"{option}: {part.strip()!r} is not a fraction such as 1/10") from None
        if not 0 < value <= 1:
            raise InputError(f"{option}: {part.strip()} must be in (0, 1]")
        if str(value) in out:       # run twice, one budget's two runs would be read as two seeds
            raise InputError(f"{option}: {part.strip()} is given twice (as {value})")
        out.append(str(value))
    return out


def parse_methods(text: str | None, known=METHODS) -> list[str]:
    """The names `--methods` gives, each one of `known` (all of `known` without the option); the
    memory and transfer benches' parser."""
    if text is None:
        return list(known)
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise InputError(f"--methods: unknown {', '.join(unknown) or 'nothing'}; choose from {', '.join(known)}")
    return wanted


@dataclass
class Fit:
    """Whether a method fits a budget, and how: its trainable set (None: the updater's own or the
    planner's), `--last-k`, the counted peak of its planned step, or the smallest budget it needs."""
    fits: bool
    trainable: set | None = None
    last_k: int | None = None
    counted_mb: float | None = None
    needs_mb: float | None = None


class MemoryModel:
    """The warmup's model with a counter for the runs' optimizer and step shape."""

    def __init__(self, checkpoint: Path, cfg: TrainConfig):
        self.model, card = load_checkpoint(checkpoint)
        self.input_shape = list(card.input_shape)
        # Every set the bench runs is fixed for its run (full FT's is everything): each epoch keeps a copy
        # of what trains alone, as the runs count it. The bench's runs keep their last epoch (keep="last").
        self.counter, self.shape = memory_counter(cfg, self.model, self.input_shape, pick_device(cfg.device),
                                                  trained_only=True, keeps_best=False)
        self.everything = {n for n, _ in self.model.named_parameters()}
        self.batch = rows_a_step_carries(cfg.batch_size)     # the rows a run plans its steps for
        self._needs: dict = {}
        self._shapes: dict = {}
        self.full_mb = self.counter.count(self.shape, self.everything).peak / MiB

    def needs(self, trainable) -> float:
        """The smallest budget a step training `trainable` fits (one image at a time), once per set."""
        key = frozenset(trainable)
        if key not in self._needs:
            self._needs[key] = smallest_budget(self.counter, self.model, trainable, self.batch)
        return self._needs[key]

    def shape_for(self, trainable, budget_mb: float):
        """The shape and count a run's plan gives a step training `trainable` under the budget (the
        reserve held back, as the run holds it), or None: nothing fits."""
        if self.needs(trainable) > budget_mb:       # below the smallest step: no shape to search
            return None
        key = (frozenset(trainable), budget_mb)
        if key not in self._shapes:     # full FT planned, layers and rgn plan the same set
            self._shapes[key] = fit_shape(self.counter, self.model, self.batch, usable(budget_mb), trainable,
                                          self.shape.bn_statistics)
        return self._shapes[key]

    def largest_last_k(self, budget_mb: float) -> tuple[int, float] | None:
        """The most last blocks whose step fits in micro-batches of at least MIN_LAST_K_CHUNK images
        (recomputed blocks allowed), or of as many as the classifier alone fits where that is fewer,
        and its counted peak: by bisection, as more blocks never keep less. Without a floor every k
        would fit in smaller micro-batches, down to the classifier's smallest budget."""
        head = self.shape_for(classifier_names(self.model), budget_mb)
        if head is None:
            return None
        floor, found, lo, hi = min(MIN_LAST_K_CHUNK, head[0].chunk), None, 1, len(named_blocks(self.model))
        while lo <= hi:
            k = (lo + hi) // 2
            fitted = self.shape_for(classifier_names(self.model, k), budget_mb)
            if fitted is None or fitted[0].chunk < floor:
                hi = k - 1
            else:
                found, lo = (k, fitted[1].peak / MiB), k + 1
        return found

    def fit(self, method: str, budget_mb: float) -> Fit:
        if method == "last-k":
            found = self.largest_last_k(budget_mb)
            if found is None:       # not even the classifier, one image at a time
                return Fit(False, needs_mb=self.needs(classifier_names(self.model)))
            return Fit(True, classifier_names(self.model, found[0]), found[0], found[1])
        if method == "planner":
            lowest = self.needs(classifier_names(self.model))
            return Fit(True) if lowest <= budget_mb else Fit(False, needs_mb=lowest)
        trainable = {"classifier": classifier_names(self.model),
                     "bias-norm": bias_norm_names(self.model)}.get(method, self.everything)
        fitted = self.shape_for(trainable, budget_mb)
        counted = None if fitted is None else fitted[1].peak / MiB
        if counted is None:
            return Fit(False, trainable, needs_mb=self.needs(trainable))
        return Fit(True, trainable, counted_mb=counted)


def run_memory_fields(run_dir: Path, measured_alone: bool = True) -> dict:
    """Counted and measured peaks a run left: the records' (where the run states them), else the
    plan's counted peak in config.json. `measured_alone`: the run had a process of its own; else its
    measured peak is left out: it reused pages earlier runs freed, and on a GPU their tensors, freed
    while it ran, lower the allocator's level under the run's own growth (0 MiB seen)."""
    recs = [r for r in read_records(run_dir / "metrics.jsonl") if r.get("phase") != "baseline"]
    config = json.loads((run_dir / "config.json").read_text())
    plan = config.get("memory_plan") or {}
    counted = [r["memory_counted_mb"] for r in recs if isinstance(r.get("memory_counted_mb"), (int, float))]
    measured = [r["memory_measured_mb"] for r in recs
                if measured_alone and isinstance(r.get("memory_measured_mb"), (int, float))]
    method = next((r["memory_measure_method"] for r in recs if r.get("memory_measure_method")), None) \
        if measured_alone else None
    return {"counted_peak_mb": max(counted) if counted else (plan.get("counted") or {}).get("peak_mb"),
            "counted_source": "records" if counted else ("plan" if plan else None),
            "measured_peak_mb": max(measured) if measured else None, "measure_method": method,
            "micro_batch": plan.get("micro_batch"), "recompute": len(plan.get("recompute") or []),
            "trained_tensors": len(plan["trainable"]) if plan.get("trainable") else None}


def measured_peak_words(methods: list[str]) -> str:
    """How a bench's measured peaks were taken, for its notes."""
    words = []
    if "cuda-allocated" in methods:
        words.append("cuda-allocated: each run in a process of its own, torch's CUDA allocator peak over its level "
                     "before training")
    if set(methods) - {"cuda-allocated"}:
        words.append(f"{', '.join(sorted(set(methods) - {'cuda-allocated'}))}: each run in a process of its own, "
                     "its resident high-water mark's growth over the level just before training")
    return "; ".join(words)


def warmup_clean(run_dir: Path) -> float | None:
    """The warmup's clean test accuracy (the run's baseline evaluation)."""
    base = [r for r in read_records(run_dir / "metrics.jsonl") if r.get("phase") == "baseline"]
    return base[0].get("clean_test_acc") if base else None


@dataclass
class MemorySettings:
    checkpoint: Path
    data: DataOptions            # shift and shift_seed are set per scenario and seed
    epochs: int
    lr: float
    batch_size: int
    val_subset: int
    device: str
    fractions: list[str]
    methods: list[str]
    planner_only: list[str]      # budgets at which the planner alone runs
    scenario: str
    seeds: list[int]
    out: Path
    own_process: bool = True     # each run in a spawned process of its own (see the module's docstring)


def row_key(method: str, fraction: str | None) -> str:
    return method if fraction is None else f"{method}@{fraction}"


def run_name(key: str) -> str:
    """A row's folder under runs/."""
    return key.replace("@", "-at-").replace("/", "-").replace(" ", "-")


def run_result(run_dir: Path, seed: int, full_mb: float, measured_alone: bool = True,
               start_clean: float | None = None) -> dict:
    """One finished run's row: accuracies, FLOPs, joules, counted and measured peaks, forgetting (the
    clean test accuracy lost since `start_clean`, by default the run's own evaluation of its warmup)."""
    result = {"seed": seed, **outcome(run_dir), **run_memory_fields(run_dir, measured_alone), "run_dir": str(run_dir)}
    if result["clean_test_acc"] is None:       # no shift: the test set is the clean one
        result["clean_test_acc"] = result["test_acc"]
    if result["counted_peak_mb"] is None:      # unbudgeted: the bench's count of the same step
        result["counted_peak_mb"], result["counted_source"] = round(full_mb, 3), "bench counter"
    start = warmup_clean(run_dir) if start_clean is None else start_clean
    result["forgetting_pts"] = None if start is None or result["clean_test_acc"] is None else \
        100 * (start - result["clean_test_acc"])
    return result


def run_bench(s: MemorySettings, log=print, after_seed=None, stop: BenchStop | None = None) -> dict:
    """Every (method, budget) that fits, per seed; the rows that do not fit, with what they need.
    `after_seed` is called with the results so far after each seed (a bench stopped later keeps them).
    A run stopped early (bench/stopping.py) ends the bench: it is named in "stopped", not a row. A run
    that refuses its budget (bench/bench_run.py) is named in "refused", not a row, and the bench goes on."""
    stop = stop or BenchStop()
    base_cfg = TrainConfig(epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, device=s.device, **SAME_NUMERICS)
    mm = MemoryModel(s.checkpoint, base_cfg)
    budgets = {f: round(float(Fraction(f)) * mm.full_mb, 3) for f in s.fractions + s.planner_only}
    fits = {row_key(m, f): mm.fit(m, budgets[f]) for f in s.fractions for m in s.methods}
    fits.update({row_key("planner", f): mm.fit("planner", budgets[f]) for f in s.planner_only})
    runs = [(REFERENCE, None, "none", None)] + [(m, f, METHODS[m], budgets[f]) for f in s.fractions + s.planner_only
                                                 for m in s.methods if fits.get(row_key(m, f), Fit(False)).fits]
    results: dict = {row_key(m, f): [] for m, f, _, _ in runs}
    refused: dict = {}
    t0 = time.perf_counter()
    for seed in s.seeds:
        data = DataOptions(**{**vars(s.data), "shift": SCENARIOS[s.scenario], "shift_seed": seed})
        data.__dict__.pop("_source", None)
        for method, fraction, sparsity, budget in runs:
            key, fit = row_key(method, fraction), fits.get(row_key(method, fraction))
            cfg = TrainConfig(epochs=s.epochs, lr=s.lr, seed=seed, device=s.device, batch_size=s.batch_size,
                              val_subset=s.val_subset, sparsity=sparsity, memory_budget_mb=budget, keep="last",
                              checkpoint_every=0, eval_batch_size=s.batch_size, **SAME_NUMERICS,
                              method={"last_k": fit.last_k} if fit is not None and fit.last_k else {})
            run_dir = s.out / "runs" / run_name(key) / f"seed{seed}"
            done = run_one(stop, s.checkpoint, data, cfg, run_dir, s.own_process, key, seed, refused, log)
            if done == STOPPED:
                break
            if done == RAN:
                result = run_result(run_dir, seed, mm.full_mb, s.own_process)
                results[key].append(result)
                log(f"  seed {seed} {key:22s} test {result['test_acc']:.4f} "
                    f"clean {result['clean_test_acc'] or 0:.4f} counted {result['counted_peak_mb']:.1f} MiB")
        if stop.stopped:
            break
        if after_seed is not None:
            after_seed(bench_state(mm, budgets, fits, results, time.perf_counter() - t0, s.own_process, refused))
    return {**bench_state(mm, budgets, fits, results, time.perf_counter() - t0, s.own_process, refused),
            "stopped": stop.describe()}


def bench_state(mm: MemoryModel, budgets: dict, fits: dict, results: dict, wall_s: float, own_process: bool,
                refused: dict) -> dict:
    methods_used = sorted({r.get("energy_method") for rows in results.values() for r in rows} - {None})
    return {"full_ft_counted_mb": round(mm.full_mb, 3), "budgets_mb": budgets, "input_shape": mm.input_shape,
            "fits": {k: {"fits": f.fits, "last_k": f.last_k, "counted_mb": f.counted_mb, "needs_mb": f.needs_mb}
                     for k, f in fits.items()},
            "results": {k: list(v) for k, v in results.items()}, "wall_s": wall_s, "energy_methods": methods_used,
            "own_process": own_process, "refused": {k: list(v) for k, v in refused.items()}}


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def rows_of(bench: dict) -> list[dict]:
    """One row per (method, budget): means over seeds, the paired difference against full FT, or
    'does not fit' with the smallest budget the method needs (by the bench's count, or as every run of
    the row named it in refusing its budget; those runs' seeds and lines in refused_seeds and
    refused_reasons)."""
    results, out = bench["results"], []
    keys = [REFERENCE] + [row_key(m, f) for f in bench["fractions"] for m in bench["methods"]]
    keys += [row_key("planner", f) for f in bench.get("planner_only", [])]
    for key in keys:
        method, _, fraction = key.partition("@")
        rs, refused = results.get(key, []), (bench.get("refused") or {}).get(key, [])
        fit = refused_fit(bench["fits"].get(key, {"fits": True}), rs, refused)
        row = {"key": key, "method": method, "fraction": fraction or None,
               "budget_mb": bench["budgets_mb"].get(fraction), "fits": fit["fits"], "last_k": fit.get("last_k"),
               "needs_mb": fit.get("needs_mb"), "refused_seeds": [r["seed"] for r in refused],
               "refused_reasons": [r["reason"] for r in refused]}
        if rs:
            diff = paired(results, key, REFERENCE) if key != REFERENCE else None
            row.update({"seeds": len(rs), "test_acc": mean_of(rs, "test_acc"),
                        "clean_test_acc": mean_of(rs, "clean_test_acc"),
                        "forgetting_pts": mean_of(rs, "forgetting_pts"),
                        "counted_peak_mb": max(r["counted_peak_mb"] for r in rs),
                        "measured_peak_mb": mean_of(rs, "measured_peak_mb"),
                        "flops_train": mean_of(rs, "flops_train"), "energy_j": mean_of(rs, "energy_j"),
                        "micro_batch": rs[0].get("micro_batch"), "recompute": rs[0].get("recompute"),
                        "vs_full": diff})
        out.append(row)
    return out


def planner_pairs(bench: dict) -> list[dict]:
    """The planner minus each other method run at the same budget, paired by seed."""
    results, pairs = bench["results"], []
    for fraction in bench["fractions"]:
        planner = row_key("planner", fraction)
        for method in bench["methods"]:
            other = row_key(method, fraction)
            if method != "planner" and results.get(planner) and results.get(other):
                pairs.append(paired(results, planner, other))
    return [p for p in pairs if p is not None]


def table(bench: dict) -> str:
    lines = [f"full fine-tuning's counted peak: {bench['full_ft_counted_mb']:.1f} MiB (batch {bench['batch_size']}, "
             f"input {'x'.join(map(str, bench['input_shape']))}); scenario {bench['scenario']}: "
             f"`--shift {SCENARIOS[bench['scenario']]}`", "",
             "| method | budget | budget MiB | counted peak MiB | measured peak MiB | shifted test % | "
             "− full FT (points, 95% CI) | clean test % | forgetting (points) | train GFLOP | joules | plan |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench["rows"]:
        budget = r["fraction"] or "none"
        if not r["fits"]:
            said = ": the run refused its budget" if r.get("refused_seeds") else ""
            lines.append(f"| {r['method']} | {budget} | {_num(r['budget_mb'])} | does not fit "
                         f"(needs {_num(r['needs_mb'])} MiB){said} | - | - | - | - | - | - | - | - |")
            continue
        if "test_acc" not in r:
            continue
        d = r["vs_full"]
        diff = "reference" if r["key"] == REFERENCE else (
            "-" if d is None else f"{d['diff_pts']:+.2f} " + (f"[{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
                                                               if d["n"] > 1 else "(1 seed: no interval)"))
        plan = []
        if r.get("last_k"):
            plan.append(f"k={r['last_k']}")
        if r.get("micro_batch") and r["micro_batch"] < bench["batch_size"]:
            plan.append(f"micro-batch {r['micro_batch']}")
        if r.get("recompute"):
            plan.append(f"{r['recompute']} blocks recomputed")
        refused = f" ({r['seeds']} of {len(bench['seeds'])} seeds; {len(r['refused_seeds'])} refused its budget)" \
            if r.get("refused_seeds") else ""
        lines.append(f"| {r['method']}{refused} | {budget} | {_num(r['budget_mb'])} | {_num(r['counted_peak_mb'])} | "
                     f"{_num(r['measured_peak_mb'])} | {_pts(r['test_acc'])} | {diff} | {_pts(r['clean_test_acc'])} | "
                     f"{_num(r['forgetting_pts'], '+.2f')} | {_num((r['flops_train'] or 0) / 1e9)} | "
                     f"{joules(r['energy_j'])} | {', '.join(plan) or '-'} |")
    pairs = planner_pairs(bench)
    if pairs:
        lines += paired_table(pairs)
    lines += refused_lines(bench.get("refused"))
    lines += stopped_lines(bench.get("stopped"))
    return "\n".join(lines) + "\n"


def plot(bench: dict, out: Path) -> Path:
    """Shifted test accuracy against counted peak memory (log x), one marker per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_method: dict = {}
    for r in bench["rows"]:
        if r.get("test_acc") is not None:
            by_method.setdefault(r["method"], []).append((r["counted_peak_mb"], 100 * r["test_acc"]))
    for method, points in by_method.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "*-" if method == "planner" else "o-",
                label=method, markersize=9 if method in ("planner", REFERENCE) else 5)
    for fraction, mb in bench["budgets_mb"].items():
        ax.axvline(mb, color="grey", alpha=0.3, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("counted training peak, MiB (log)")
    ax.set_ylabel("shifted test accuracy % (mean over seeds)")
    ax.set_title(f"{bench['model']} {bench['input_shape'][-1]} px, {bench['scenario']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / "accuracy-memory.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(bench: dict, out: Path) -> dict:
    bench["rows"] = rows_of(bench)
    md = table(bench)
    notes = [f"{len(bench['seeds'])} paired seeds {bench['seeds']}: per seed every method starts from the same "
             "warmup, split, shifted images and data order (as in bench adapt)."
             + (" Written after each seed while the bench ran: the seeds done so far." if bench.get("partial") else ""),
             "Budgets are fractions of full fine-tuning's counted peak (weights, optimizer state, batch, saved "
             "activations, gradients, transients; the datasets come on top). Counted peak: the run's records "
             "where they state it, else its memory plan's; unbudgeted full FT: the same counter's count.",
             f"last-k: the largest k whose step fits the budget in micro-batches of {MIN_LAST_K_CHUNK} images or more "
             "(recomputed blocks allowed), or as the classifier alone fits where that is fewer. A row that does not fit was not run; "
             "it names the smallest budget the method needs (one image at a time)."
             + (" A run that refused its budget (it also counts what its process grew by before its first step, "
                "which the bench's count cannot) is in no mean or paired difference; where every run of a row "
                "refused, the row does not fit and names the smallest budget its runs named."
                if any((bench.get("refused") or {}).values()) else ""),
             "Measured peak: " + ("the runs' records (" + measured_peak_words(sorted(
                 {r.get("measure_method") for rs in bench["results"].values() for r in rs} - {None})) +
                 "; mean over seeds)"
                                  if any(r.get("measured_peak_mb") is not None for r in bench["rows"])
                                  else "not measured (-)" + ("" if bench.get("own_process", True) else
                                                             ": every run in one process (--one-process), "
                                                             "where a run reuses pages earlier runs freed") + "."),
             "Paired differences below the table: the planner minus each method run at the same budget, "
             "in shifted test accuracy points.",
             "Forgetting: the warmup's clean test accuracy minus the run's. FLOPs are counted "
             "(torch.utils.flop_counter), recomputation and the planner's probe included.",
             f"Joules: training phase, {', '.join(bench['energy_methods']) or 'not measured'}"
             + (" (an estimate from CPU time, not a measurement)." if "estimated" in bench["energy_methods"] else ".")]
    return write_bench_files(out, "memory", md, notes, bench, lambda: plot(bench, out))


def summary_line(bench: dict) -> str:
    """The planner at 1/10 against full FT, for the closing line; its runs that refused their budget are
    in no difference, and said."""
    row = next((r for r in bench["rows"] if r["key"] == "planner@1/10"), None)
    if row is None:
        return ""
    refused = len(row.get("refused_seeds") or [])
    if not row["fits"] and refused:
        return (f"planner at 1/10 refused its budget ({_num(row['budget_mb'])} MiB; needs {_num(row['needs_mb'])} "
                f"MiB): no difference from full FT")
    d = row.get("vs_full")
    if d is None:
        return ""
    return (f"planner at 1/10 − full FT: {d['diff_pts']:+.2f} points [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] "
            f"over {d['n']} seeds" + (f"; {plural(refused, 'seed')} refused its budget, left out" if refused else ""))

