"""`--sparsity budget`'s choice of what trains, run for the trainer: the candidates of
engine/machine/joule_plan.py counted under the memory budget, their steps timed on the run's images,
their expected gains from the checkpoint's set gains (engine/loop/set_gains.py) or else a short
trial of each (engine/loop/trial_gain.py), and the winner made the run's memory plan. Lite residual
branches exist on the model only while they are counted, timed and tried, and stay only where they win
(then the optimizer takes them as a group of their own)."""

from __future__ import annotations

import math

import torch

from edge_sel.core import measuring
from edge_sel.core.evidence import Allowance
from edge_sel.core.flops import FlopCounter
from edge_sel.core.memory import MiB, MemoryCounter, StepShape
from edge_sel.engine.machine import joule_plan
from edge_sel.engine.machine.joule_plan import Candidate
from edge_sel.engine.loop.plan_sets import candidate_statistics, distinct, fixed_sets, run_chose_statistics
from edge_sel.engine.loop.run_estimate import besides_training, estimate_words
from edge_sel.engine.loop.set_gains import expected_gains, nearest_mark, recipe_at
from edge_sel.engine.loop.trial_gain import (TRIAL_STEPS, affordable, fewest_steps_for_trials, held_out_count,
                                             normalised, run_trials, trial_images)
from edge_sel.engine.machine.memory_plan import (MemoryPlan, choose_trainable, fit_shape, forward_batch_that_fits,
                                                 smallest_budget, usable)
from edge_sel.errors import InputError
from edge_sel.methods.presets import typed
from edge_sel.methods.update.lite_residual import residual_names
from edge_sel.models.lite_residual import NAME, add_residuals, has_residuals, remove_residuals

def fitted(counter, model, rows: int, budget: int, bn: str, name: str, trainable: set[str],
           may_freeze: bool = True) -> Candidate:
    c = Candidate(name, set(trainable))     # its gain: its trial's (none until tried)
    found = fit_shape(counter, model, rows, budget, c.trainable, bn, may_freeze=may_freeze)
    if found is None:
        c.out = "does not fit"
    else:
        c.shape, c.count, c.shape_notes = found
    return c


def probe_batch(ds, mean, std, rows: int):
    """`rows` of the run's images (repeated where it has fewer), normalised as training sees them."""
    return normalised(ds, mean, std, torch.arange(rows, device=ds.images.device) % max(1, len(ds)))


def plan_by_joules(trainer, rows: int, bn: str, gains_for) -> MemoryPlan:
    """The plan of the winning candidate, by the candidates' trials. `gains_for(model)` -> (gains,
    source): each tensor's squared gradient (or the warmup's Fisher information), which chooses the
    tensors of the gain-per-byte set and of the sparse update."""
    cfg, model, counter = trainer.config, trainer.model, trainer.memory_counter
    spent = getattr(trainer, "memory_spent_mb", 0.0)     # what the process grew by before the first step, measured
    budget = usable(cfg.memory_budget_mb, spent)
    everything = {n for n, _ in model.named_parameters()}
    asked = counter.count(StepShape(rows, bn_statistics=bn), everything).peak / MiB    # before any branch
    x, y = probe_batch(trainer.train_ds, trainer.mean, trainer.std, rows)
    losses = trainer.objective.losses
    steps = max(1, cfg.epochs) * math.ceil(len(trainer.train_ds) / cfg.batch_size)
    trial_steps = min(TRIAL_STEPS, steps)
    # A run too short for two trials to pay back chooses the cheapest set that fits: the gain probe
    # (it only picks the tensors of the sparse and gain-per-byte sets, which are never the cheapest)
    # and those two candidates are skipped.
    held_out = held_out_count(len(trainer.train_ds))
    too_short = steps < fewest_steps_for_trials(trial_steps, cfg.batch_size, held_out)
    served = getattr(trainer, "set_gains", None)        # the checkpoint's: measured by the server, longer than a trial
    if served is not None:
        gains, source = None, {"source": "none: the checkpoint's set gains choose (engine/loop/set_gains.py); the "
                                         "sparse and gain-per-byte sets not planned"}
    elif too_short:
        gains, source = None, {"source": f"none: {steps} steps, fewer than two trials pay back in "
                                         f"(engine/loop/trial_gain.py); the sparse and gain-per-byte sets not planned"}
    else:
        gains, source = gains_for(model)
    candidates: list[Candidate] = []
    by_run = run_chose_statistics(cfg)
    own_lr = cfg.lr if typed(cfg, "lr") else None
    mark = None if served is None else nearest_mark(served, steps * cfg.batch_size)

    def fit(name, names, count_with=counter):
        mode, may_freeze = candidate_statistics(model, bn, by_run, names)
        # A shipped set trains in its best recipe's statistics mode (the run's own where it chose one).
        recipe = None if mark is None or name not in served["sets"] else recipe_at(
            served, name, mark, ("frozen" if bn == "frozen" else "train") if by_run else None, own_lr)
        if recipe is not None and not by_run:
            mode, may_freeze = ("frozen", True) if recipe["bn_statistics"] == "frozen" else (mode, may_freeze)
        return fitted(count_with, model, rows, budget, mode, name, names, may_freeze)

    chosen, notes = (None, []) if too_short or served else choose_trainable(counter, model, rows, budget, gains, bn)
    fixed = distinct(fixed_sets(model, gains))
    if chosen is not None:          # by a fixed set's name where it is one
        same = next((name for name, names in fixed if set(names) == set(chosen)), "fisher")
        candidates.append(fit(same, chosen))
    candidates += [fit(name, set(names)) for name, names in fixed if chosen is None or set(names) != set(chosen)]
    lite_trial = None
    lite = counted_lite(trainer, fit)
    candidates.append(lite)
    server = None if served is None else expected_gains(served, candidates, steps * cfg.batch_size, lr=own_lr,
                                                        own_modes=True)
    # The trials' images only where trials may run: the server's gains stand for them.
    images = None if too_short or server else trial_images(trainer.train_ds, trainer.mean, trainer.std,
                                                           cfg.batch_size, trial_steps, cfg.seed)
    # Every candidate is counted and timed, but with the server's gains and no limit on joules or time
    # only those as good as the most gaining can win: the others are not timed (their probe would be
    # planning's time and joules for nothing). The trials, cheapest first, only as far as the run can
    # pay them back (trial_gain.affordable): one not tried cannot be chosen over one that was.
    limited = trainer.budget_j is not None or cfg.time_budget_s is not None
    for c in [] if server is None or limited else joule_plan.outside_band(candidates):
        c.out = joule_plan.OUTSIDE_BAND
    timed = [c for c in candidates if c is not lite and not c.out]
    # Where the server's gains leave one candidate that can win and no limit is set, its joules change
    # nothing: nothing is timed. Evaluation is timed only for a limit (what the run spends besides
    # training counts against it), at the most rows the budget lets it hold (apply_plan cuts its batch).
    if server and not limited and len(timed) + (not lite.out) < 2:
        timed = []
    eval_rows = forward_batch_that_fits(counter, trainer.eval_batch_size, cfg.memory_budget_mb, 0, spent_mb=spent)
    cost = joule_plan.measure_costs(timed, model, x, y, losses, trainer.device, steps, trainer.meter,
                                    evaluation=(trainer.precision.eval, trainer.eval_autocast, eval_rows)
                                    if limited or not server else None)
    add_residuals(model, counter.input_shape)       # the branches: timed and tried while on the model
    try:
        probe = joule_plan.measure_costs([] if lite.out or not (timed or limited or not server) else [lite], model,
                                         x, y, losses, trainer.device, steps, trainer.meter)
        if measuring.in_child():        # every count and step cost is kept: the trials are the run's
            raise measuring.MeasuredOnly(trainer)
        if lite.step_s is not None and lite.joules is None and cost["watts"]:
            lite.joules = lite.seconds * cost["watts"]
        to_try, sizing = affordable(candidates, trial_steps, cfg.batch_size, held_out)
        to_try = [] if images is None else to_try
        if lite in to_try:      # counted apart: the run's counter keeps no branch's counts
            lite_trial = tried(trainer, [lite], images, trial_steps, FlopCounter(model, trainer.flops.input_shape))
    finally:
        remove_residuals(model)
    if all(c.count is None for c in candidates):
        lowest = smallest_budget(counter, model, None, rows, spent)
        raise InputError(f"--memory-budget {cfg.memory_budget_mb:g}: no step fits; the smallest that does is "
                         f"{lowest:.1f} MiB (the classifier alone, one image at a time)")
    trial = tried(trainer, [c for c in to_try if c is not lite], images, trial_steps)
    for c in candidates:
        if to_try and c.count is not None and c not in to_try:
            c.out = "not tried: its trial would cost more than this run pays back"
    besides = besides_training(trainer, cost.get("eval_s_per_image"), cost["watts"])
    winner, reason = joule_plan.choose(candidates, trainer.budget_j, cfg.time_budget_s,
                                       (besides["evaluation_j"] or 0.0) + (besides["planning_j"] or 0.0),
                                       (besides["evaluation_s"] or 0.0) + besides["planning_s"])
    if server:
        reason = (f"expected gains from the checkpoint's set gains after {server['steps']} steps of {server['rows']} images "
                  f"(the mark nearest this run's {server['run_images']:,} images): {reason}")
    elif not to_try:        # no gain known: the cheapest that fits (and meets a limit, where one does)
        limit = reason if reason.startswith("no candidate fits the limit") else f"{winner.name} costs the fewest joules"
        reason = f"no trial pays back in this run ({sizing['words']}): {limit}"
    total = max(c.gain for c in candidates)
    words = f"{joule_plan.plan_words(candidates, winner, reason)}; {estimate_words(winner.joules, besides)}"
    source = {**(source or {}), "candidates": [c.summary(total) for c in candidates], "chosen": winner.name,
              "reason": reason, "steps": steps, "cost_probe": {"lite": probe, "others": cost},
              "run_estimate": {"training_j": None if winner.joules is None else round(winner.joules, 1),
                               "training_s": None if winner.seconds is None else round(winner.seconds, 2), **besides},
              "expected_acc": ("held-out accuracy of the server's images after each set's steps from these weights "
                                "(the checkpoint's set_gains, engine/loop/set_gains.py)" if server else
                                "held-out accuracy after a short trial of each candidate (engine/loop/trial_gain.py)"),
              **({"set_gains": server} if server else {}),
              "trial": {"lite": lite_trial, "others": trial, "sizing": sizing},
              # Counted: every trial's steps and held-out evaluation (planning's; in the run's totals).
              "trial_flops": sum((t or {}).get("trial_flops", 0) for t in (lite_trial, trial))}
    if winner is lite:
        adopt_residuals(trainer)
    if winner.lr is not None and own_lr is None:        # the winning recipe's rate (engine/loop/set_gains.py)
        cfg.lr = float(winner.lr)
    return MemoryPlan(cfg.memory_budget_mb, rows, winner.shape.chunk, list(winner.shape.recompute),
                      winner.shape.bn_statistics, winner.count.mib(), round(asked, 3), sorted(winner.trainable),
                      [words, *(notes if candidates and winner is candidates[0] and chosen is not None else []),
                       *winner.shape_notes], source, round(spent, 3), winner.shape.lean)


def counted_lite(trainer, fit) -> Candidate:
    """TinyTL's lite residual branches with the biases, counted on a model that has them (added for the
    count and removed: the run's counter keeps no branch's counts)."""
    model, counter = trainer.model, trainer.memory_counter
    add_residuals(model, counter.input_shape)
    try:
        lite_counter = MemoryCounter(model, counter.input_shape, counter.optimizer_factory, counter.loss_fn,
                                     kernels=counter.kernels, step=counter.step, store=counter.store)
        return fit("lite-residual+bias", residual_names(model), lite_counter)
    finally:
        remove_residuals(model)


def tried(trainer, candidates: list[Candidate], images, steps: int, flops: FlopCounter | None = None) -> dict:
    """The candidates' trials, their joules measured by the run's meter (planning's, the run's own) and
    their FLOPs counted by the run's counter (`flops`: one for the model as it is, where it has branches)."""
    if not candidates:
        return {}
    trainer.meter.begin("plan-trial")
    try:
        cost = run_trials(trainer.model, candidates, images, trainer.memory_counter.optimizer_factory,
                          trainer.objective.losses, trainer.config.batch_size, steps, flops or trainer.flops,
                          allowance=Allowance.of_run(trainer).begin())
    finally:
        energy = trainer.meter.end("plan-trial") or {}
    # Its images are in the plan's record (`trial`), not the run's sample counts: no sample of the run trained.
    return {**cost, "trial_energy_j": energy.get("energy_j")}


def adopt_residuals(trainer) -> None:
    """Branches on the live model for the run: the optimizer's own group, a counter and FLOP counts
    that see them (a resumed run whose plan trains them comes here too, before its state loads)."""
    model = trainer.model
    if has_residuals(model):
        return
    add_residuals(model, trainer.memory_counter.input_shape)
    branches = [p for n, p in model.named_parameters() if f"{NAME}." in n]
    trainer.optimizer.add_param_group({"params": branches})
    old = trainer.memory_counter
    trainer.memory_counter = MemoryCounter(model, old.input_shape, old.optimizer_factory, old.loss_fn,
                                           kernels=old.kernels, step=old.step, store=old.store)
    trainer.flops._train.clear()
    trainer.flops._eval.clear()


def plan_trains_residuals(plan: MemoryPlan) -> bool:
    return plan.trainable is not None and any(f"{NAME}." in n for n in plan.trainable)

