"""Runs a suite: every system over every seed through `engine.runs.run.finetune`, in one process, then
the final full-test evaluation, the random controls at the realised activation, and the results.

Data: the fine-tuning split of `BenchData`. Per epoch the engine evaluates on a validation split
(optionally capped, for speed; it drives stage gates and best-epoch selection) and on the test
set or its first `epoch_test_per_class` images of each class (the seed's "100/class" set). After
the last epoch every run's final weights are evaluated on the full test set and on the 100/class
subset; those two numbers are the table's accuracy.
"""

from __future__ import annotations

import copy
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch

from edge_sel.bench.suites import Phase, Rewind, System
from edge_sel.config import TrainConfig
from edge_sel.core.words import plural
from edge_sel.data import Splits
from edge_sel.data.split import stratified_take
from edge_sel.engine.machine.device import pick_device
from edge_sel.engine.evaluation.evaluate import accuracy, predict_dataset
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune
from edge_sel.methods.presets import apply_preset
from edge_sel.methods.update import lottery
from edge_sel.models import load_checkpoint
from edge_sel.report.runs import RunData, combine_phases, load_run, totals


def first_per_class(ds, k: int) -> torch.Tensor:
    """Positions of the first k samples of each class in index order (the seed's held-out
    "100/class" set: a subset of the test set)."""
    order = torch.argsort(ds.index.cpu(), stable=True)
    labels = ds.labels.cpu()[order]
    parts = [order[labels == c][:k] for c in range(ds.num_classes)]
    return torch.cat(parts).sort().values


@dataclass
class BenchData(DataOptions):
    val_cap: int | None = None                  # stratified subset of the validation split
    epoch_test_per_class: int | None = None     # per-epoch test on the first k per class

    def load(self) -> Splits:
        splits = super().load()
        val, test = splits.val, splits.test
        if self.val_cap is not None and self.val_cap < len(val):
            val = val.subset(stratified_take(val, total=self.val_cap, seed=5))
        if self.epoch_test_per_class is not None:
            test = test.subset(first_per_class(test, self.epoch_test_per_class))
        return Splits(splits.train, val, test)

    def full_test(self):
        return DataOptions.load(self).test


@dataclass
class SuiteSettings:
    name: str
    systems: list[System]
    data: BenchData
    common: dict                    # training recipe of systems without a preset
    seeds: list[int]
    start: dict[int, Path]          # seed -> starting checkpoint
    out: Path
    device: str = "auto"
    quiet: bool = False
    notes: list[str] = field(default_factory=list)
    pinned: dict = field(default_factory=dict)     # TrainConfig fields every phase takes as given (no probe)
    report: bool = True                             # report/report.html with its plots


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def make_config(phase: Phase, common: dict, seed: int, device: str, pinned: dict | None = None) -> TrainConfig:
    training = dict(common) if phase.training is None else dict(phase.training)
    training.update(pinned or {})
    # checkpoint_every=0: full state saved at epoch ends only; the bench times training, not disk writes.
    # keep="last": a system is measured by what its training produced (and a phase hands its trained
    # weights to the next one), not by the keep-best guard a device run applies on top. eval_every=1:
    # its table reports every system's best validation accuracy, so every epoch validates.
    return TrainConfig(epochs=phase.epochs, seed=seed, device=device, strategy=phase.strategy,
                       sparsity=phase.sparsity, method=copy.deepcopy(phase.method), checkpoint_every=0,
                       keep="last", eval_every=1, **training)


TRAINING_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs",
                   "label_smoothing", "batch_size")


def control_phase(phase: Phase, activation: float, common: dict) -> Phase:
    """Random gating in place of `phase`'s gate: same epochs, updater, optimizer and schedule (the
    preset's, when the phase has one), at `activation`."""
    cfg = apply_preset(make_config(phase, common, 0, "cpu"))
    training = {k: getattr(cfg, k) for k in TRAINING_FIELDS}
    return Phase(phase.name, phase.epochs, "random", cfg.sparsity, {"target_activation": activation}, training)


def realised_activation(run: RunData) -> float:
    """Share of samples the gated phases trained on: the gate's own share where it reports one
    (ast-prod computes every row but counts the loss of the selected ones), else computed/available."""
    recs = [r for r in run.records if r.get("strategy") not in (None, "dense")]
    recs = recs or run.records
    avail = sum(r.get("samples_available") or 0 for r in recs)
    if any(r.get("gate_activation") is not None for r in recs):
        return sum((r.get("gate_activation") or 0) * (r.get("samples_available") or 0) for r in recs) / avail
    return sum(r.get("backward_samples") or 0 for r in recs) / avail


@torch.no_grad()
def test_accuracy(run_dir: Path, ds, device: torch.device) -> float:
    model, card = load_checkpoint(run_dir)
    model.to(device).eval()
    logits = predict_dataset(lambda x: model(x).float(), ds.to(device), card.mean, card.std, 1000)
    return accuracy(logits, ds.labels)


def other_load() -> float:
    """1-minute load average above what this process's own threads explain: other work competing
    for the CPU, which inflates wall time and CPU-time energy estimates."""
    return max(0.0, os.getloadavg()[0] - torch.get_num_threads())


def ran_in(summary: dict) -> str:
    """The precision a run's passes ran in, as its summary records it."""
    p = summary.get("precision")
    if not p:
        return "fp32"                        # runs from before the precision choice
    return f"training {p['train']}, evaluation {p['eval']} ({p['source']})"


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


def run_system(system: System, seed: int, s: SuiteSettings, steps: list) -> RunData:
    """Every step of one system for one seed; returns the phases combined into one run."""
    start = s.start[seed]
    base = s.out / "runs" / slug(system.name) / f"seed{seed}"
    previous, phases = start, []
    for step in steps:
        if isinstance(step, Rewind):
            rewound = base / step.name
            lottery.prune_and_rewind(previous, start, rewound, step.prune_frac)   # writes lottery.json there
            previous = rewound
            continue
        cfg = make_config(step, s.common, seed, s.device, s.pinned)
        if step.sparsity == "lottery":
            cfg.method["lottery_mask"] = str(Path(previous) / lottery.MASK_FILE)
        run_dir = base / slug(step.name)
        t0, load = time.perf_counter(), other_load()
        finetune(previous, s.data, cfg, run_dir, overwrite=True, quiet=True)
        run = load_run(run_dir)
        run.extra["phase_name"] = step.name
        run.extra["precision"] = ran_in(run.summary)
        run.extra["other_load"] = max(load, other_load())
        log(f"    {system.name} seed {seed} {step.name}: {plural(len(run.records), 'epoch')}, {time.perf_counter() - t0:.0f} s, "
            f"val {run.records[-1].get('val_acc') or 0:.3f}", s.quiet)
        phases.append(run)
        previous = run_dir
    combined = combine_phases(phases, f"{system.name} s{seed}", group=system.name)
    combined.extra["final_dir"] = str(previous)
    combined.extra["other_load"] = max(p.extra["other_load"] for p in phases)
    combined.extra["precision"] = "; ".join(dict.fromkeys(p.extra["precision"] for p in phases))
    return combined


def run_suite(s: SuiteSettings) -> dict:
    device = pick_device(s.device)
    full_test = s.data.full_test()
    test_100 = full_test.subset(first_per_class(full_test, 100))
    # The starting point every system fine-tunes from, evaluated the same way.
    start = [{"seed": seed, "test_full_acc": test_accuracy(s.start[seed], full_test, device),
              "test_100_acc": test_accuracy(s.start[seed], test_100, device)} for seed in s.seeds]
    by_name = {sys_.name: sys_ for sys_ in s.systems}
    results: dict[str, list[dict]] = {sys_.name: [] for sys_ in s.systems}
    runs: list[RunData] = []
    t_start = time.perf_counter()
    for seed in s.seeds:
        for i, system in enumerate(s.systems):
            steps, matched = system.steps, None
            if system.control_of:
                gated = next(r for r in runs if r.group == system.control_of and r.extra["seed"] == seed)
                matched = realised_activation(gated)
                steps = [control_phase(p, matched, s.common) if isinstance(p, Phase) and p.gated else p
                         for p in by_name[system.control_of].steps]
            log(f"[seed {seed}, {i + 1}/{len(s.systems)}] {system.name}"
                + (f" (random at realised activation {matched:.3f})" if matched is not None else ""), s.quiet)
            run = run_system(system, seed, s, steps)
            final_dir = Path(run.extra["final_dir"])
            accs = {"test_full_acc": test_accuracy(final_dir, full_test, device),
                    "test_100_acc": test_accuracy(final_dir, test_100, device)}
            # The checkpoint in final_dir is the model the run hands back: its full-test accuracy is
            # what the report's figures show.
            run.extra.update(seed=seed, totals={**accs, "final_test_acc": accs["test_full_acc"],
                                                "output_test_acc": accs["test_full_acc"]})
            runs.append(run)
            results[system.name].append({"seed": seed, "matched_activation": matched,
                                         "other_load": run.extra["other_load"], "precision": run.extra["precision"],
                                         "run_dirs": [str(p) for p in run.paths], **totals(run)})
    return {"runs": runs, "results": results, "start": start, "wall_s": time.perf_counter() - t_start,
            "device": str(device), "test_full_size": len(full_test), "test_100_size": len(test_100)}


NUMERIC = ("test_full_acc", "test_100_acc", "best_val_acc", "epochs", "samples_trained", "activation",
           "gate_activation", "flops_forward", "flops_backward", "flops_scoring", "flops_train", "flops_eval",
           "train_wall_s", "eval_wall_s", "energy_j", "energy_per_epoch_j", "eval_energy_j", "matched_activation")


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds (std None with one seed)."""
    out = {}
    for key in NUMERIC:
        vals = [r[key] for r in per_seed if isinstance(r.get(key), (int, float))]
        if vals:
            out[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
                        "n": len(vals)}
    kinds = {r.get("energy_kind") for r in per_seed} - {None}
    sources = {r.get("energy_source") for r in per_seed} - {None}
    out["energy_kind"] = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
    out["energy_source"] = "+".join(sorted(sources)) or None
    return out
