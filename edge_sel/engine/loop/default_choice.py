"""The choice a plain fine-tune makes for itself (`--sparsity auto`: `finetune` and `night` where no
method, statistics or learning-rate option is given): which set trains, what its BatchNorm statistics
do and its learning rate, by the most expected accuracy per joule. Under --memory-budget the planner
makes the same choice with the step's shape (engine/loop/joule_choice.py).

The candidates are the sets the transfer bench runs (plan_sets.fixed_sets). Each one's expected
accuracy, in order of what costs the device least:

1. shipped: the server measured each set from these weights at each recipe (learning rates x frozen or
   re-estimated statistics; engine/loop/set_gains.py), and the device reads the best recipe at the mark
   nearest the images its run trains on; nothing is trained here;
2. a counted trial on the device (engine/loop/trial_gain.py): each set a few steps at the run's rate
   (TRIAL_LR where none was given) and statistics mode, scored on held-out local images, where the run
   is long enough to pay two trials back;
3. neither: every parameter trains with its statistics re-estimated at the run's rate, as before, and
   the line says why.

Each candidate as good as the most expected (joule_plan.choose: within half a point and one paired
standard error) is timed on this device (a few steps, kept per device in the step-cost cache) and the
one of fewest estimated joules wins. A part the user gave (--bn-stats or --bn-mode, --lr) is kept, and
the choice is made among what agrees with it. One line says what was chosen, why and the runner-up;
the whole comparison goes to config.json (`choice`) and the first record (`choice_*` costs)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from functools import partial

from edge_sel.core import bn_stats
from edge_sel.core.memory import MemoryCount, StepShape
from edge_sel.engine.loop.joule_choice import probe_batch
from edge_sel.engine.loop.plan_sets import LAST_K, candidate_statistics, distinct, fixed_sets
from edge_sel.engine.loop.set_gains import expected_gains
from edge_sel.engine.loop.trial_gain import (TRIAL_STEPS, affordable, fewest_steps_for_trials, held_out_count,
                                             run_trials, trial_images)
from edge_sel.engine.machine import joule_plan
from edge_sel.engine.machine.joule_plan import Candidate
from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.core.flops import FlopCounter
from edge_sel.engine.levers.levers import make_objective
from edge_sel.methods import make_updater
from edge_sel.methods.presets import typed

AUTO = "auto"
TIMING_ROWS = 16        # images a candidate's step is timed on
FITS = MemoryCount(0, 0, 0, 0, 0, 0, 0, 0, 0)      # no budget: every candidate fits (nothing counted)
# The updater each candidate set runs as (--sparsity NAME and its options).
UPDATERS = {"classifier": ("classifier", {}), "bn+classifier": ("bn-affine", {}),
            "bias+bn+classifier": ("bias-norm", {}), f"last-{LAST_K}": ("last-k", {"last_k": LAST_K}),
            "full FT": ("none", {})}
# A device trial's learning rate where the run gives none: the middle of the server's grid
# (set_gains.LR_GRID); the SGD default of 0.05 collapsed full fine-tuning with frozen statistics on Lite0.
TRIAL_LR = 0.01


def wanted(cfg) -> bool:
    return cfg.sparsity == AUTO


def users_mode(cfg) -> str | None:
    """The statistics mode the user chose (--bn-stats, --bn-mode), as a recipe names it, or None."""
    if cfg.bn_stats is None and cfg.bn_mode is None and not cfg.bn_conditions:     # None: nobody chose
        return None
    return "frozen" if bn_stats.resolve(cfg) == bn_stats.FROZEN else "train"


def choose_default(trainer) -> dict | None:
    """Makes the run's choice where it asked for one (the module's docstring) and applies it to the
    configuration the trainer builds from: --sparsity, its options, --bn-stats, --lr. Returns what was
    chosen, with every candidate and what choosing cost, or None where the run chose itself."""
    cfg = trainer.config
    if not wanted(cfg):
        return None
    if not cfg.epochs:          # nothing trains: nothing to choose
        cfg.sparsity = "none"
        return None
    t0 = time.perf_counter()
    trainer.meter.begin("choice")
    try:
        found = compare(trainer, users_mode(cfg), cfg.lr if typed(cfg, "lr") else None)
    finally:
        energy = (trainer.meter.end("choice") or {}).get("energy_j")
    found["cost"] = {"choice_wall_s": round(time.perf_counter() - t0, 3), "choice_energy_j": energy,
                     "choice_flops": found.pop("flops", 0)}
    apply(cfg, found)
    trainer.updater = make_updater(cfg.sparsity, cfg.method)      # the run's, for what was chosen    # The first record's measured cost (engine/loop/memory_records.py); the trials' counted FLOPs join the
    # first epoch's memory_plan_trial_flops, which a resumed epoch keeps (engine/loop/progress.py).
    trainer.choice_cost = {k: v for k, v in found["cost"].items() if k != "choice_flops"}
    if not trainer.quiet:
        print(f"edge-sel: {found['line']}", file=sys.stderr, flush=True)
    return found


def compare(trainer, mode: str | None, lr: float | None) -> dict:
    cfg, model = trainer.config, trainer.model
    steps = max(1, cfg.epochs) * math.ceil(len(trainer.train_ds) / cfg.batch_size)
    sets = [(name, names) for name, names in distinct(fixed_sets(model, None)) if name in UPDATERS]
    candidates = [candidate(trainer, name, names, mode) for name, names in sets]
    served = trainer.set_gains
    server = None if served is None else expected_gains(served, candidates, steps * cfg.batch_size, mode, lr)
    # Made before the run's own (the layout and precision probes then time what was chosen).
    losses = make_objective(cfg, model, trainer.memory).losses
    flops = FlopCounter(model, trainer.train_ds.input_shape)
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Steps are timed on TIMING_ROWS images and scaled to the run's batch: only the candidates' ratio
    # and the run's order of joules matter here (timed at the batch, planning was 3x the training of a
    # one-epoch run of 500 images).
    rows = min(cfg.batch_size, TIMING_ROWS)
    x, y = probe_batch(trainer.train_ds, trainer.mean, trainer.std, rows)
    scaled = steps * cfg.batch_size / rows
    trial, trial_flops = None, 0
    if server is None:
        held_out = held_out_count(len(trainer.train_ds))
        if steps < fewest_steps_for_trials(min(TRIAL_STEPS, steps), cfg.batch_size, held_out):
            return fallback(cfg, mode, lr, f"{steps} steps are too few to pay back two trials")
        for c in candidates:
            c.lr = lr or TRIAL_LR
        timed(candidates, model, x, y, losses, trainer, scaled, cfg.batch_size / rows)
        to_try, sizing = affordable(candidates, min(TRIAL_STEPS, steps), cfg.batch_size, held_out)
        if not to_try:
            return fallback(cfg, mode, lr, f"no trial pays back in this run ({sizing['words']})")
        images = trial_images(trainer.train_ds, trainer.mean, trainer.std, cfg.batch_size, TRIAL_STEPS, cfg.seed)
        trial = run_trials(model, to_try, images, optimizer, losses, cfg.batch_size, TRIAL_STEPS, flops)
        trial_flops = trial["trial_flops"]
        for c in candidates:
            c.out = "" if c in to_try else "not tried: its trial would cost more than this run pays back"
    else:
        for c in candidates:        # in its best recipe's statistics mode, counted as such
            if c.trial and c.trial["bn_statistics"] != c.shape.bn_statistics:
                c.shape = replace(c.shape, bn_statistics=c.trial["bn_statistics"])
        for c in joule_plan.outside_band(candidates):
            c.out = "not timed: its expected gain is outside the band of the most expected gain"
        can_win = [c for c in candidates if not c.out]
        if len(can_win) > 1 or trainer.budget_j is not None or cfg.time_budget_s is not None:  # else joules decide nothing
            timed(can_win, model, x, y, losses, trainer, scaled, cfg.batch_size / rows)
    winner, reason = joule_plan.choose(candidates, trainer.budget_j, cfg.time_budget_s)
    runner = max((c for c in candidates if c is not winner and c.count is not None and not c.out),
                 key=lambda c: (c.gain, -(c.joules or c.seconds or 0)), default=None)
    source = (f"shipped: the server's held-out accuracy after {server['steps']} steps of {server['rows']} images "
              f"(nearest this run's {server['run_images']:,})" if server else
              f"a trial of {TRIAL_STEPS} steps on this device's images, held-out accuracy")
    return {"set": winner.name, "bn_statistics": winner.shape.bn_statistics, "lr": winner.lr, "source": source,
            "reason": reason, "runner_up": None if runner is None else runner.name, "steps": steps,
            "candidates": [{**c.summary(max(d.gain for d in candidates)), "lr": c.lr, "counted_mb": None,
                            "step_s": None if c.step_s is None else round(c.step_s, 4)} for c in candidates],
            "trial": trial, "flops": trial_flops, "line": line(winner, runner, source, reason)}


def candidate(trainer, name: str, names: set[str], mode: str | None) -> Candidate:
    """A set, in the user's statistics mode or the planner's rule for it (a shipped recipe may change
    it), in whole batches of TIMING_ROWS images (as it is timed). Without a memory budget nothing is
    counted: every set fits."""
    c = Candidate(name, set(names), lr=trainer.config.lr)
    statistics = mode or candidate_statistics(trainer.model, "train", False, c.trainable)[0]
    c.shape = StepShape(trainer.config.batch_size, bn_statistics=statistics)
    c.count = FITS
    return c


def timed(candidates, model, x, y, losses, trainer, steps: float, per_step: float) -> None:
    """Each candidate's step timed on the TIMING_ROWS images `x` (the device's cache, else timed): its
    run's estimated seconds and joules over `steps` such steps, and its seconds a run's step."""
    probes = [replace(c, shape=replace(c.shape, batch_size=len(y))) for c in candidates]
    joule_plan.measure_costs(probes, model, x, y, losses, trainer.device, steps, trainer.meter)
    for c, probe in zip(candidates, probes):
        c.seconds, c.joules = probe.seconds, probe.joules
        c.step_s = None if probe.step_s is None else probe.step_s * per_step


def fallback(cfg, mode: str | None, lr: float | None, why: str) -> dict:
    statistics = mode or "train"
    chosen = f"every parameter trains, statistics {'frozen' if statistics == 'frozen' else 're-estimated'}, " \
             f"lr {cfg.lr:g}"
    return {"set": "full FT", "bn_statistics": statistics, "lr": cfg.lr, "source": None, "reason": why,
            "runner_up": None, "candidates": [], "trial": None, "flops": 0,
            "line": f"chose {chosen}: the checkpoint ships no recipes and {why} (pretrain with --set-gains-steps to "
                    f"ship them; --sparsity, --bn-stats, --lr to choose yourself)"}


def line(winner: Candidate, runner: Candidate | None, source: str, reason: str) -> str:
    def said(c: Candidate) -> str:
        statistics = "frozen" if c.shape.bn_statistics == "frozen" else "re-estimated"
        joules = "" if c.joules is None else f", {c.joules:,.0f} J estimated"
        return f"{c.name} (statistics {statistics}, lr {c.lr:g}; {c.gain:.1%} expected{joules})"
    runner_up = "" if runner is None else f"; runner-up {said(runner)}"
    by = "the recipes the checkpoint ships" if source.startswith("shipped") else "a trial of each on this device"
    return (f"chose {said(winner)}: {reason.split(' (within')[0]}, by {by}{runner_up} "
            f"(--sparsity, --bn-stats, --lr to choose yourself)")


def apply(cfg, found: dict) -> None:
    """The choice as the options the run then runs with (config.json keeps them, and `choice`)."""
    cfg.sparsity, method = UPDATERS[found["set"]]
    cfg.method.update(method)
    if users_mode(cfg) is None:         # else the user's own (per condition included) stays
        cfg.bn_stats = bn_stats.FROZEN if found["bn_statistics"] == "frozen" else bn_stats.REESTIMATE
        cfg.bn_mode = "eval" if found["bn_statistics"] == "frozen" else "train"
    cfg.lr = float(found["lr"])
    cfg.choice = {k: v for k, v in found.items() if k not in ("line", "cost")}

