"""The choice a plain fine-tune makes for itself (`--sparsity auto`: `finetune` and `night` where no
method, statistics or learning-rate option is given): which set trains, what its BatchNorm statistics
do and its learning rate, by the most expected accuracy per joule. Under --memory-budget the planner
makes the same choice with the step's shape (engine/loop/joule_choice.py).

The candidates are the sets the transfer bench runs (plan_sets.fixed_sets). Each one's expected
accuracy, in order of what costs the device least:

1. shipped: the server measured each set from these weights at each recipe (learning rates x frozen or
   re-estimated statistics; engine/loop/set_gains.py) on images no step trained on, and the device
   reads the recipe at the mark nearest the images its run trains on; a fine-tune's card keeps the
   warmup's recipes, so every night of a device's life chooses by them. Where the device's images are
   not the server's kind, or the shipped figures cannot tell the leader from the runner-up, the
   leaders race on the device within a tenth of the run (engine/loop/device_race.py). Where its images
   are not the server's kind and no race decides, the server's figures rank sets on another camera's
   images: the device takes the prior (3.), as a device without recipes does;
2. a counted trial on the device (engine/loop/trial_gain.py): each set a few steps at the run's rate
   (TRIAL_LR where none was given) and statistics mode, scored on held-out local images, where the run
   is long enough to pay two trials back;
3. neither: the prior the transfer bench found best for the warmup's kind (PRETRAINED_PRIOR for a
   published backbone; every parameter re-estimated at the run's rate for one trained from scratch),
   and the line says why.

Each candidate as good as the most expected (joule_plan.choose: a deficit a paired test puts under half
a point) is timed on this device (a few steps, kept per device in the step-cost cache) and the one of
fewest estimated joules wins. A part the user gave (--bn-stats or --bn-mode, --lr) is kept, and the
choice is made among what agrees with it (a rate off the recipes' grid is kept, and the set and
statistics chosen by the recipes at theirs). A set the user names (--sparsity) runs at its shipped
recipe unless they name its statistics and rate too. One line says what was chosen, why and the
runner-up; the whole comparison goes to config.json (`choice`) and the first record (`choice_*` costs)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from functools import partial

from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.core import bn_stats
from edge_sel.core.evidence import Allowance
from edge_sel.core.flops import FlopCounter
from edge_sel.core.memory import MemoryCount, StepShape
from edge_sel.engine.levers.levers import make_objective
from edge_sel.engine.loop import device_race
from edge_sel.engine.loop.joule_choice import probe_batch
from edge_sel.engine.loop.plan_sets import LAST_K, candidate_statistics, distinct, fixed_sets
from edge_sel.engine.loop.set_gains import expected_gains, nearest_mark, on_grid, recipe_at
from edge_sel.engine.loop.trial_gain import (TRIAL_STEPS, affordable, fewest_steps_for_trials, held_out_count,
                                             run_trials, trial_images)
from edge_sel.engine.machine import joule_plan
from edge_sel.engine.machine.joule_plan import Candidate
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
# Without recipes or a trial, a published backbone's warmup trains its norms and classifier with the
# statistics frozen at 0.01: the transfer bench's best row on Lite0 from ImageNet at 96 px (2,000
# images, 2 epochs, 5 paired seeds: 75.76% clean, 69.04% under noise; full fine-tuning re-estimated at
# the run's 0.05 fell to 51.0% on 400 photos; docs/results/2026-11-28-default-choice-transfer.md).
PRETRAINED_PRIOR = ("bn+classifier", "frozen", 0.01)


def wanted(cfg) -> bool:
    return cfg.sparsity == AUTO


def users_mode(cfg) -> str | None:
    """The statistics mode the user chose (--bn-stats, --bn-mode), as a recipe names it, or None."""
    if cfg.bn_stats is None and cfg.bn_mode is None and not cfg.bn_conditions:     # None: nobody chose
        return None
    return "frozen" if bn_stats.resolve(cfg) == bn_stats.FROZEN else "train"


def users_lr(cfg) -> float | None:
    return cfg.lr if typed(cfg, "lr") else None


def named_set(cfg) -> str | None:
    """The shipped set's name of the --sparsity the user gave, or None."""
    for name, (sparsity, options) in UPDATERS.items():
        if cfg.sparsity == sparsity and all(cfg.method.get(k) == v for k, v in options.items()):
            return name
    return None


def choose_default(trainer) -> dict | None:
    """Makes the run's choice where it asked for one (the module's docstring) and applies it to the
    configuration the trainer builds from: --sparsity, its options, --bn-stats, --lr. A set the user
    named takes its shipped recipe's statistics and rate. Returns what was chosen, with every candidate
    and what choosing cost, or None where the run chose itself."""
    cfg = trainer.config
    if not wanted(cfg):
        return at_its_recipe(trainer)
    if not cfg.epochs:          # nothing trains: nothing to choose
        cfg.sparsity = "none"
        return None
    t0 = time.perf_counter()
    trainer.meter.begin("choice")
    try:
        found = compare(trainer, users_mode(cfg), users_lr(cfg))
    finally:
        energy = (trainer.meter.end("choice") or {}).get("energy_j")
    found["cost"] = {"choice_wall_s": round(time.perf_counter() - t0, 3), "choice_energy_j": energy,
                     "choice_flops": found.pop("flops", 0)}
    apply(cfg, found)
    trainer.updater = make_updater(cfg.sparsity, cfg.method)      # the run's, for what was chosen
    # The first record's measured cost (engine/loop/memory_records.py); the trials' counted FLOPs join the
    # first epoch's memory_plan_trial_flops, which a resumed epoch keeps (engine/loop/progress.py).
    trainer.choice_cost = {k: v for k, v in found["cost"].items() if k != "choice_flops"}
    say(trainer, found["line"])
    return found


def say(trainer, line: str) -> None:
    if not trainer.quiet:
        print(f"edge-sel: {line}", file=sys.stderr, flush=True)


def at_its_recipe(trainer) -> dict | None:
    """A set the user named (--sparsity) runs at the statistics mode and rate its shipped recipe says,
    each unless the user gave it too; one line says so. None where nothing was taken."""
    cfg, served = trainer.config, trainer.set_gains
    name = named_set(cfg)
    if name is None or served is None or name not in served.get("sets", {}) or not cfg.epochs \
            or (users_mode(cfg) and typed(cfg, "lr")) or cfg.memory_budget_mb is not None:
        return None
    steps = cfg.epochs * math.ceil(len(trainer.train_ds) / cfg.batch_size)
    recipe = recipe_at(served, name, nearest_mark(served, steps * cfg.batch_size), users_mode(cfg), users_lr(cfg))
    if recipe is None:
        return None
    took = []
    if users_mode(cfg) is None:
        set_statistics(cfg, recipe["bn_statistics"])
        took.append(f"statistics {'frozen' if recipe['bn_statistics'] == 'frozen' else 're-estimated'}")
    if not typed(cfg, "lr"):
        cfg.lr = float(recipe["lr"])
        took.append(f"lr {recipe['lr']:g}")
    found = {"set": name, "named_by": "the user (--sparsity)", "bn_statistics": recipe["bn_statistics"],
             "lr": cfg.lr, "source": source_words(served, recipe["steps"]), "expected_acc": recipe["acc"]}
    cfg.choice = found
    say(trainer, f"--sparsity {cfg.sparsity} runs at {name}'s shipped recipe: {', '.join(took)} ({recipe['acc']:.1%} "
                 f"expected by {found['source']}) (--bn-stats, --lr to choose yourself)")
    return found


def source_words(served: dict, steps: int) -> str:
    """Which images scored a shipped figure, and how many."""
    whose = "the warmup's recipes" if served.get("measured_on") else "the recipes the checkpoint ships"
    images = served.get("images") or ""
    held = served["held_out"]
    where = ("the server's validation images no step trained on" if images.startswith("held out") else
             "the server's training split (images its epochs trained on)" if images else "the server's images")
    return f"{whose}: accuracy on {held} of {where}, after {steps} steps of {served['rows']}"


def compare(trainer, mode: str | None, lr: float | None) -> dict:
    cfg, model = trainer.config, trainer.model
    steps = max(1, cfg.epochs) * math.ceil(len(trainer.train_ds) / cfg.batch_size)
    sets = [(name, names) for name, names in distinct(fixed_sets(model, None)) if name in UPDATERS]
    candidates = [candidate(trainer, name, names, mode) for name, names in sets]
    served = trainer.set_gains
    server = None if served is None else expected_gains(served, candidates, steps * cfg.batch_size, mode, lr)
    off_grid = served is not None and lr is not None and not on_grid(served, lr)
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
    clock = partial(timed, model=model, x=x, y=y, losses=losses, trainer=trainer, steps=scaled,
                    per_step=cfg.batch_size / rows)
    trial, trial_flops, confirmed = None, 0, None
    if server is None:
        held_out = held_out_count(len(trainer.train_ds))
        if steps < fewest_steps_for_trials(min(TRIAL_STEPS, steps), cfg.batch_size, held_out):
            return fallback(trainer, mode, lr, f"{steps} steps are too few to pay back two trials")
        for c in candidates:
            c.lr = lr or TRIAL_LR
        clock(candidates)
        to_try, sizing = affordable(candidates, min(TRIAL_STEPS, steps), cfg.batch_size, held_out)
        if not to_try:
            return fallback(trainer, mode, lr, f"no trial pays back in this run ({sizing['words']})")
        images = trial_images(trainer.train_ds, trainer.mean, trainer.std, cfg.batch_size, TRIAL_STEPS, cfg.seed)
        trial = run_trials(model, to_try, images, optimizer, losses, cfg.batch_size, TRIAL_STEPS, flops,
                           allowance=Allowance.of_run(trainer).begin())
        trial_flops = trial["trial_flops"]
        for c in candidates:
            c.out = "" if c in to_try else "not tried: its trial would cost more than this run pays back"
    else:
        for c in candidates:        # in its best recipe's statistics mode, counted as such
            if c.trial and c.trial["bn_statistics"] != c.shape.bn_statistics:
                c.shape = replace(c.shape, bn_statistics=c.trial["bn_statistics"])
            if off_grid:            # the user's own rate, the set and statistics by the recipes at theirs
                c.lr = lr
        for c in joule_plan.outside_band(candidates):
            c.out = joule_plan.OUTSIDE_BAND
        can_win = [c for c in candidates if not c.out]
        if len(can_win) > 1 or trainer.budget_j is not None or cfg.time_budget_s is not None:  # else joules decide nothing
            clock(can_win)
    winner, reason = joule_plan.choose(candidates, trainer.budget_j, cfg.time_budget_s)
    if server is not None:
        winner, reason, confirmed, spent = confirm(trainer, candidates, winner, reason, served, steps, mode,
                                                   lr if not off_grid else None, losses, flops, clock)
        trial_flops += spent
        if off_grid:
            for c in candidates + ([winner] if winner not in candidates else []):
                c.lr = lr
    runner = max((c for c in candidates if c is not winner and c.count is not None and not c.out
                  and c.name != winner.name), key=lambda c: (c.gain, -(c.joules or c.seconds or 0)), default=None)
    source = (source_words(served, server["steps"]) + f" (the mark nearest this run's {server['run_images']:,} images)"
              if server else f"a trial of {TRIAL_STEPS} steps on this device's images, accuracy on "
                             f"{trial['held_out_images']} of them held out of its steps")
    decided_by = "the device's race" if confirmed and confirmed.get("decided") else \
        "the prior" if confirmed and confirmed.get("prior") else (
        "the recipes the warmup shipped" if served and served.get("measured_on") else
        "the recipes the checkpoint ships" if server else "a trial of each on this device")
    top = max(d.gain for d in candidates)
    return {"set": winner.name, "bn_statistics": winner.shape.bn_statistics, "lr": winner.lr, "source": source,
            "decided_by": decided_by, "reason": reason, "runner_up": None if runner is None else runner.name,
            "steps": steps, **({"lr_off_grid": lr} if off_grid else {}),
            "candidates": [{**c.summary(top), "lr": c.lr, "counted_mb": None,
                            "step_s": None if c.step_s is None else round(c.step_s, 4)} for c in candidates],
            "trial": trial, "confirmation": confirmed, "flops": trial_flops,
            "line": line(winner, runner, decided_by, reason, confirmed, lr if off_grid else None)}


def confirm(trainer, candidates, winner, reason, served, steps, mode, lr, losses, flops, clock):
    """The device's confirmation of the server's choice (engine/loop/device_race.py): its question, and
    where it must, the race. Returns (winner, reason, what was measured, counted FLOPs)."""
    cfg = trainer.config
    why, facts = device_race.question(trainer, candidates, winner, served)
    spent = flops.eval_batch(facts["distance_images"]) if facts["distance_images"] >= 2 else 0
    if why is None:
        return winner, reason, {**facts, "asked": None}, spent
    entrants = device_race.racers(trainer, candidates, winner, served, steps * cfg.batch_size, mode, lr)
    result = device_race.run_race(trainer, entrants, winner, steps, served, losses, flops, clock)
    spent += (result.get("cost") or {}).get("trial_flops", 0)
    summary = {**facts, "asked": why, **{k: v for k, v in result.items() if k not in ("pick", "stands_for_prior", "cost")},
               **({"race_flops": result["cost"]["trial_flops"], "race_wall_s": result["cost"]["trial_wall_s"]}
                  if result.get("cost") else {})}
    if not result.get("decided"):
        unsettled = "the race could not tell its racers apart" if result.get("raced") else result["why"]
        prior = facts.get("camera_differs") and at_prior(trainer, candidates, mode, lr, clock)
        if prior:       # the server's figures are from another camera's images: they do not rank for this one
            summary.update(kept=f"the prior, {prior.name}: the server's images are not this device's kind and "
                                f"{unsettled}", prior=True)
            return prior, f"the prior for the warmup's kind, {prior_words(trainer)}, as its camera is not the " \
                          f"server's and {unsettled}", summary, spent
        summary["kept"] = f"the server's leader: {unsettled}"
        return winner, reason, summary, spent
    pick = result["pick"]
    chosen = pick.shipped
    chosen.shape, chosen.lr, chosen.gain, chosen.correct = pick.shape, pick.lr, pick.gain, pick.correct
    chosen.trial = {**(chosen.trial or {}), "race": pick.trial and {k: v for k, v in pick.trial.items() if k != "marks"}}
    chosen.joules, chosen.seconds = pick.joules, pick.seconds
    summary["kept"] = f"the race's pick: {pick.name}, statistics {pick.shape.bn_statistics}, lr {pick.lr:g}"
    return chosen, (f"the device's race on {result['held_out']} of its validation images ({why}): "
                    f"{pick.name} {pick.trial['held_out_acc']:.1%} after {result['steps']} steps"), summary, spent


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


def the_prior(trainer, mode: str | None, lr: float | None) -> tuple[str, str, float]:
    """(set, statistics mode, rate) the prior for the warmup's kind says, each part the user gave kept."""
    pretrained = getattr(trainer, "pretrained_start", False)
    name, statistics, rate = PRETRAINED_PRIOR if pretrained else ("full FT", "train", trainer.config.lr)
    return name, mode or statistics, lr or rate


def prior_words(trainer) -> str:
    return ("the transfer bench's best row for a published backbone (Lite0 from ImageNet, 5 seeds)"
            if getattr(trainer, "pretrained_start", False) else
            "every parameter at the run's rate, as a warmup trained from scratch trains")


def at_prior(trainer, candidates: list[Candidate], mode: str | None, lr: float | None, clock) -> Candidate | None:
    """The candidate the prior names, in its statistics mode and at its rate, timed as such; None where no
    candidate is its set."""
    name, statistics, rate = the_prior(trainer, mode, lr)
    c = next((c for c in candidates if c.name == name), None)
    if c is None:
        return None
    if (c.shape.bn_statistics, c.lr) != (statistics, rate) or c.seconds is None:
        c.shape, c.lr = replace(c.shape, bn_statistics=statistics), rate
        clock([c])
    return c


def fallback(trainer, mode: str | None, lr: float | None, why: str) -> dict:
    """Neither recipes nor a trial: the prior the bench found for the warmup's kind (module docstring)."""
    name, statistics, rate = the_prior(trainer, mode, lr)
    chosen = (f"{name}, statistics {'frozen' if statistics == 'frozen' else 're-estimated'}, lr {rate:g}")
    return {"set": name, "bn_statistics": statistics, "lr": rate, "source": None, "decided_by": "the prior",
            "reason": why, "runner_up": None, "candidates": [], "trial": None, "flops": 0,
            "line": f"chose {chosen}: the checkpoint ships no recipes and {why}, so the prior: {prior_words(trainer)} "
                    f"(--sparsity, --bn-stats, --lr to choose yourself)"}


def line(winner: Candidate, runner: Candidate | None, decided_by: str, reason: str, confirmed: dict | None,
         off_grid: float | None) -> str:
    def said(c: Candidate) -> str:
        statistics = "frozen" if c.shape.bn_statistics == "frozen" else "re-estimated"
        joules = "" if c.joules is None else f", {c.joules:,.0f} J estimated"
        return f"{c.name} (statistics {statistics}, lr {c.lr:g}; {c.gain:.1%} expected{joules})"
    runner_up = "" if runner is None else f"; runner-up {said(runner)}"
    asked = "" if not confirmed or not confirmed.get("asked") else (
        f"; the device checked because {confirmed['asked']}: kept {confirmed['kept']}")
    rate = "" if off_grid is None else f"; your lr {off_grid:g} is off the recipes' grid: kept, the set and statistics chosen at theirs"
    return (f"chose {said(winner)}: {reason}, by {decided_by}{runner_up}{asked}{rate} "
            f"(--sparsity, --bn-stats, --lr to choose yourself)")


def set_statistics(cfg, statistics: str) -> None:
    cfg.bn_stats = bn_stats.FROZEN if statistics == "frozen" else bn_stats.REESTIMATE
    cfg.bn_mode = "eval" if statistics == "frozen" else "train"


def apply(cfg, found: dict) -> None:
    """The choice as the options the run then runs with (config.json keeps them, and `choice`)."""
    cfg.sparsity, method = UPDATERS[found["set"]]
    cfg.method.update(method)
    if users_mode(cfg) is None:         # else the user's own (per condition included) stays
        set_statistics(cfg, found["bn_statistics"])
    cfg.lr = float(found["lr"])
    cfg.choice = {k: v for k, v in found.items() if k not in ("line", "cost")}
