"""The loop's counted memory: a counter of the run's steps (core/memory.py) with the run's optimizer,
the shape its steps take (micro-batches, recomputed blocks, BatchNorm statistics), and the plan that
fits a --memory-budget (engine/machine/memory_plan.py) applied to the run."""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from functools import partial

import torch

from edge_sel.backends.torch_backend import freeze_batchnorm_stats, make_optimizer
from edge_sel.config import TrainConfig
from edge_sel.core.memory import MiB, MemoryCounter, StepShape, nbytes
from edge_sel.core.micro_batches import bounds
from edge_sel.core.lean_saves import set_saves
from edge_sel.engine.loop.counted_step import run_step_factory
from edge_sel.engine.machine.device import random_streams_kept
from edge_sel.engine.loop.first_use import grown_mb, warm_kernels
from edge_sel.engine.loop.trial_gain import normalised
from edge_sel.engine.loop.joule_choice import adopt_residuals, plan_by_joules, plan_trains_residuals
from edge_sel.engine.machine.memory_plan import (RESERVE, MemoryPlan, fit_shape, forward_batch_that_fits, plan_memory,
                                                 spent_after_planning, usable)
from edge_sel.engine.machine import peak_memory
from edge_sel.engine.machine.count_store import CountStore
from edge_sel.engine.loop.measure_child import plan_reading
from edge_sel.engine.loop.planning_cost import add_planning_cost, pool_in_planning, started_planning
from edge_sel.engine.loop.plan_lines import plan_lines
from edge_sel.errors import InputError
from edge_sel.methods.update.fixed_sets import classifier_names

BN_ADAPT_BATCH = 256       # images a BatchNorm re-estimation batch holds without a budget (evaluation/bn_adapt.py)
PROGRESS_S = 10.0           # seconds between the lines a plan's search prints
REPLANS = 2                 # plans made again where planning's own growth left the first one over the budget
PROBE_SAMPLES = 64          # local images whose gradients estimate what each tensor would gain


def memory_counter(cfg: TrainConfig, model, input_shape, device: torch.device, trained_only: bool = False,
                   keeps_best: bool | None = None) -> tuple[MemoryCounter, StepShape]:
    """A counter of the run's steps on `device` (on a CPU with its convolutions' own buffers);
    `trained_only`: the runs' updaters fix their sets; `keeps_best`: the runs hold --keep best's copy
    (run_step_factory; None: as a fine-tune of `cfg` does)."""
    keeps_best = cfg.keep == "best" if keeps_best is None else keeps_best
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    shape = StepShape(cfg.batch_size, bn_statistics="frozen" if cfg.bn_mode == "eval" else "train")
    kernels = "cpu" if torch.device(device).type == "cpu" else "none"
    return MemoryCounter(model, input_shape, optimizer, kernels=kernels,
                         step=run_step_factory(cfg, model, trained_only=trained_only, keeps_best=keeps_best),
                         store=CountStore()), shape


def gain_probe(model, ds, mean, std, shape: StepShape, samples: int, objective_losses, flops) -> tuple[dict, dict]:
    """Each parameter's expected gain: its squared gradient summed over micro-batches of the first
    `samples` local images (an empirical Fisher information on the device's own data), run in the
    planned shape of a step that trains everything. Returns the gains and what the probe cost."""
    x, y = normalised(ds, mean, std, torch.arange(min(samples, len(ds)), device=ds.images.device))
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    state = copy.deepcopy(model.state_dict())          # the probe leaves weights and statistics as they were
    gains = {n: 0.0 for n in params}
    t0 = time.perf_counter()
    model.train()
    if shape.bn_statistics == "frozen":
        freeze_batchnorm_stats(model)
    set_saves(model, shape.recompute, shape.lean)
    total = 0
    with random_streams_kept(x.device):
        try:
            for p in params.values():
                p.requires_grad_(True)
            for lo, hi in bounds(len(y), shape.chunk):
                model.zero_grad(set_to_none=True)
                objective_losses(model(x[lo:hi]), y[lo:hi]).mean().backward()
                for n, p in params.items():
                    if p.grad is not None:
                        gains[n] += float(p.grad.pow(2).sum())
                f, b = flops.train_step(hi - lo)
                total += f + b
        finally:
            model.zero_grad(set_to_none=True)
            set_saves(model)
            for n, p in params.items():
                p.requires_grad_(flags[n])
            model.load_state_dict(state)
    return gains, {"source": "probe: squared gradients on local images", "samples": int(len(y)),
                   "flops": int(total), "wall_s": round(time.perf_counter() - t0, 3)}


def shipped_gains(model, memory) -> tuple[dict, dict]:
    """Gains from the Fisher information the warmup ships (source data), where no probe fits; else
    each tensor's size."""
    fisher = getattr(memory, "fisher", None) or {}
    # Lite residual branches (added while planning) have none: their gain counts as none.
    names = [n for n, _ in model.named_parameters() if "lite_residual." not in n]
    if fisher and all(n in fisher for n in names):
        return ({n: float(fisher[n].sum()) if n in fisher else 0.0 for n, _ in model.named_parameters()},
                {"source": "the checkpoint's Fisher information (source data): no probe step fits the budget"})
    return ({n: float(p.numel()) for n, p in model.named_parameters()},
            {"source": "parameter counts: no probe step fits the budget and the checkpoint ships no Fisher"})


def rows_a_step_carries(batch_size: int, epoch_size: int | None = None, replayed: int = 0) -> int:
    """The most rows a step can carry: the batch, a trailing sample the loader merges into the batch
    before it (data/loader.py batch_starts), a row a gate left waiting for the next step
    (single_rows.py), no more than the epoch holds, and the anchors replayed beside them (--replay)."""
    local = batch_size + 2 if epoch_size is None else min(batch_size + 2, max(batch_size, epoch_size))
    return local + replayed


def most_rows(trainer) -> int:
    """rows_a_step_carries for the run."""
    return rows_a_step_carries(trainer.config.batch_size, len(trainer.train_ds),
                               trainer.replay.rows if trainer.replay is not None else 0)


def plan_run_memory(trainer) -> MemoryPlan | None:
    """The run's memory plan under --memory-budget (a resume keeps the one in its config), applied:
    the step's shape, the backend's micro-batch, recomputed blocks, frozen statistics, what trains."""
    cfg = trainer.config
    # Every count of this run (the plan's and the records') runs the run's own step on the twin.
    replaying = trainer.replay is not None and trainer.replay.rows > 0
    local = (cfg.batch_size, *trainer.memory_counter.input_shape) if replaying else None
    trainer.memory_counter.step = run_step_factory(cfg, trainer.model, trainer.objective, local,
                                                   trainer.updater.static_set, trainer.choice.mode == "best")
    if cfg.memory_budget_mb is None:
        return None
    if cfg.backend != "torch":
        raise InputError("--memory-budget: needs --backend torch (ORT artifacts fix what trains when exported)")
    bn = "frozen" if cfg.bn_mode == "eval" else "train"
    rows = most_rows(trainer)
    if trainer.device.type == "cpu":
        peak_memory.allocator_for_budget()      # before the gain probe: its freed blocks are not kept
        pool_in_planning(trainer)       # built or loaded before planning: its time, joules and growth are planning's
    if cfg.memory_plan is not None:
        plan = MemoryPlan.from_json(cfg.memory_plan)
        if plan_trains_residuals(plan):         # a resumed run whose plan chose lite residual branches
            adopt_residuals(trainer)
    else:
        plan = plan_reading(trainer, partial(plan_afresh, trainer, rows, bn))
        cfg.memory_plan = plan.to_json()
    return apply_plan(trainer, plan)


def plan_afresh(trainer, rows: int, bn: str) -> MemoryPlan:
    """A first start's plan: counted (or read from the device's counts), beside the growth measured."""
    cfg = trainer.config

    def first_plan() -> MemoryPlan:
        # A first pass on the meta device loads its machinery (a few MiB of Python modules, once a process).
        trainer.memory_counter.count_forward(min(rows, 2))
        # The kernels' first use and what the process grew by so far, measured: the plan fits in the
        # rest (in planning's metered window: its time and joules are planning's). Only the kernels of
        # what can train: the backbone's backward kernels and their caches (Lite0 at 96 px: about
        # 6 MiB) load only for a plan that trains into it.
        warm_kernels(trainer, trained_before_planning(trainer))
        trainer.memory_spent_mb = grown_mb(trainer)
        plan = _plan(trainer, rows, bn)
        warm_planned(trainer, plan)
        return plan
    plan = planned_in_the_open(trainer, first_plan)
    warm = trainer.memory_spent_mb
    for _ in range(REPLANS):        # planning's own growth (its caches), measured: planned again beside it
        spent = spent_after_planning(cfg.memory_budget_mb, warm, grown_mb(trainer))
        if plan.counted["peak_mb"] * MiB <= usable(cfg.memory_budget_mb, spent):
            break
        trainer.memory_spent_mb = spent
        plan = planned_in_the_open(trainer, partial(_plan, trainer, rows, bn))
        warm_planned(trainer, plan)
    grown = grown_mb(trainer)
    plan.grown_mb = round(grown, 3)
    refuse_what_cannot_hold(trainer, plan, grown)
    plan.notes += [trainer.cuda_workspaces] if getattr(trainer, "cuda_workspaces", None) else []
    return plan


def fixed_set(trainer) -> set[str] | None:
    """The parameter names the updater trains where its set is fixed for the run, else None."""
    updater = trainer.updater
    return set(updater.trainable(trainer.model)) if updater.static_set and hasattr(updater, "trainable") else None


def moving_state(trainer) -> set[str] | None:
    """The state keys a run's training can move, which --keep best copies (engine/evaluation/keep.py):
    a fixed set's parameters and every buffer (statistics trained, re-estimated or banked), or None
    (every key) where the set moves or another backend trains."""
    fixed = fixed_set(trainer) if trainer.config.backend == "torch" else None
    params = {n for n, _ in trainer.model.named_parameters()}
    if fixed is None or not fixed <= params:        # a set named otherwise than the model's keys: all
        return None
    return {k for k in trainer.model.state_dict() if k in fixed or k not in params}


def trained_before_planning(trainer) -> set[str] | None:
    """What the kernels loaded before the plan train: the classifier where every plan the run can make
    trains it (--sparsity budget, a fixed set holding it), the fixed set where it does not, None (every
    parameter) where the updater's set moves. The rest of a set's backward loads once planned
    (warm_planned), so a fixed set and the planner's choice of the same set fit beside the same growth
    (the norms of Lite0 at 1/10: refused as a fixed set, 50.3 MiB named against 49.6, where the planner's fitted)."""
    head = classifier_names(trainer.model)
    if trainer.updater.name == "budget":
        return head
    fixed = fixed_set(trainer)
    return head if fixed is not None and head <= fixed else fixed


def warm_planned(trainer, plan: MemoryPlan) -> None:
    """The kernels of the planned step (its set, one micro-batch in its shape), loaded before the growth
    it fits beside is measured: a set reaching into the backbone loads its backward's, which the
    classifier's did not, and a micro-batch, lean saves or recomputed blocks load kernels of their own."""
    trainable = set(plan.trainable) if plan.trainable is not None else fixed_set(trainer)
    warm_kernels(trainer, trainable, plan.shape())


def refuse_what_cannot_hold(trainer, plan: MemoryPlan, grown: float) -> None:
    """Planning itself (the counter's twin and caches, the gain probe) leaves the process larger: where
    that growth (`grown` MiB before the first step, measured) and the planned step's count no longer fit
    the budget, one line naming the smallest budget that holds them."""
    budget_mb = trainer.config.memory_budget_mb
    if plan.counted["peak_mb"] * MiB <= usable(budget_mb, spent_after_planning(budget_mb, plan.spent_mb, grown)):
        return
    holds = max((plan.counted["peak_mb"] + plan.spent_mb) / (1 - RESERVE), plan.counted["peak_mb"] + grown)
    raise InputError(f"--memory-budget {budget_mb:g}: the process grew {grown:.1f} MiB before the first step "
                     f"(torch's kernels loaded on first use and planning, measured) beside a step counted "
                     f"{plan.counted['peak_mb']:.1f} MiB: the smallest budget that holds this plan is about "
                     f"{holds:.1f} MiB")


def planned_in_the_open(trainer, make_plan) -> MemoryPlan:
    """The plan, with a line every PROGRESS_S seconds while it is searched, and its time and joules
    (a metered window of its own) kept for the first epoch's record and the run's totals."""
    counter, last = trainer.memory_counter, [0.0]

    def progress(counts: int, seconds: float) -> None:
        if seconds - last[0] >= PROGRESS_S:
            last[0] = seconds
            print(f"edge-sel: memory plan: {counts} steps counted so far ({seconds:.0f} s)", file=sys.stderr, flush=True)

    counter.on_count = None if trainer.quiet else progress
    counts, read, t0 = counter.counts_made, counter.counts_read, time.perf_counter()
    started_planning(trainer, t0)        # the plan's estimate of the run counts from here
    trainer.meter.begin("memory-plan")
    plan = None
    try:
        plan = make_plan()
    finally:        # a refused plan's cost too: a start made again counts it (take_earlier_start)
        energy = trainer.meter.end("memory-plan") or {}
        counter.on_count = None
        cost = {"memory_plan_wall_s": time.perf_counter() - t0, "memory_plan_energy_j": energy.get("energy_j"),
                "memory_plan_counts": counter.counts_made - counts,
                "memory_plan_counts_read": counter.counts_read - read}
        if plan is not None and (plan.gains or {}).get("trial_flops"):       # --sparsity budget's trials, counted
            cost["memory_plan_trial_flops"] = plan.gains["trial_flops"]
        add_planning_cost(trainer, cost)       # a plan made again (REPLANS) adds its cost to the first's: both ran
    return plan


def _plan(trainer, rows: int, bn: str) -> MemoryPlan:
    """The plan for `rows` a step: under --sparsity budget what trains too, by expected gain and joules
    among the candidates that fit (engine/loop/joule_choice.py), else the updater's own set."""
    cfg, model, updater = trainer.config, trainer.model, trainer.updater
    counter = trainer.memory_counter
    if updater.name == "budget":
        return plan_by_joules(trainer, rows, bn, gains_for(trainer, rows, bn))
    trainable = updater.trainable(model) if hasattr(updater, "trainable") else None
    return plan_memory(counter, model, rows, cfg.memory_budget_mb, trainable, bn,
                       spent_mb=getattr(trainer, "memory_spent_mb", 0.0))


def gains_for(trainer, rows: int, bn: str):
    """model -> each tensor's expected gain: a probe on local images where its step fits the budget,
    else the warmup's Fisher information (else each tensor's size). Whether the probe fits is counted
    here, on the model as the run's counter knows it; the gains are taken later, on the model given."""
    cfg, counter, model = trainer.config, trainer.memory_counter, trainer.model
    everything = {n for n, _ in model.named_parameters()}
    # The probe runs before training: it steps no optimizer and the run's kept copies do not exist yet;
    # it keeps a copy of the weights to restore and its images in floats, twice (scaled, normalised).
    samples = min(PROBE_SAMPLES, len(trainer.train_ds))
    own = nbytes([*model.parameters(), *model.buffers()]) + 2 * 4 * samples * trainer.train_ds.images[0].numel()
    step = counter.count(StepShape(2, bn_statistics="frozen"), everything)
    room = usable(cfg.memory_budget_mb, getattr(trainer, "memory_spent_mb", 0.0)) + step.optimizer + step.kept - own
    probe = fit_shape(counter, model, rows, room, everything, bn)

    def gains(model) -> tuple[dict, dict]:
        if probe is None:
            return shipped_gains(model, trainer.memory)
        found, source = gain_probe(model, trainer.train_ds, trainer.mean, trainer.std, probe[0], samples,
                                   trainer.objective.losses, trainer.flops)
        trainer.ledger.add_scoring(source["samples"], source["flops"])
        return found, source
    return gains


def apply_plan(trainer, plan: MemoryPlan) -> MemoryPlan:
    """The plan applied to the run: forward-only batches that fit beside it, the step's shape, the
    backend's micro-batch, recomputed blocks, frozen statistics, what trains."""
    cfg, model, updater = trainer.config, trainer.model, trainer.updater
    # Between steps training keeps its optimizer state, every trained tensor's gradient and its kept copies.
    trains = set(plan.trainable) if plan.trainable is not None else (
        updater.trainable(model) if hasattr(updater, "trainable") else {n for n, _ in model.named_parameters()})
    grads = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n in trains)
    kept = int((plan.counted.get("optimizer_mb", 0) + plan.counted.get("kept_mb", 0)) * MiB) + grads
    asked = trainer.eval_batch_size
    trainer.eval_batch_size = forward_batch_that_fits(trainer.memory_counter, asked, cfg.memory_budget_mb, kept,
                                                      spent_mb=plan.spent_mb)
    if trainer.eval_batch_size < asked:
        counted = trainer.memory_counter.count_forward(trainer.eval_batch_size).peak / MiB
        plan.notes.append(f"evaluation and scoring in batches of {trainer.eval_batch_size}, not {asked}: "
                          f"{trainer.eval_batch_size} counts {counted:.1f} MiB beside the {kept / MiB:.1f} MiB "
                          f"training keeps between its steps")
    cfg.eval_batch_size = trainer.eval_sets.batch_size = trainer.scoring.batch_size = trainer.eval_batch_size
    if cfg.bn_adapt:        # BatchNorm re-estimation runs before the first step: the model and its batch alone
        trainer.bn_adapt_batch = forward_batch_that_fits(trainer.memory_counter, min(BN_ADAPT_BATCH, cfg.bn_adapt),
                                                         cfg.memory_budget_mb, 0, train_mode=True,
                                                         spent_mb=plan.spent_mb)
        if trainer.bn_adapt_batch < min(BN_ADAPT_BATCH, cfg.bn_adapt):
            counted = trainer.memory_counter.count_forward(trainer.bn_adapt_batch, True).peak / MiB
            plan.notes.append(f"BatchNorm re-estimation in batches of {trainer.bn_adapt_batch}, not "
                              f"{min(BN_ADAPT_BATCH, cfg.bn_adapt)} ({counted:.1f} MiB counted)")
    allocator = []          # said with the plan, not kept in it: a resumed run decides again
    if trainer.device.type == "cpu":
        counted = plan.counted.get("peak_mb")
        heap = trainer.keep_heap = counted is not None and peak_memory.heap_fits(counted, cfg.memory_budget_mb - plan.spent_mb)
        # The heap, or else the pool of torch's freed blocks, keeps freed pages up to the budget's room
        # beside the count and the process's growth.
        room = max(0.0, cfg.memory_budget_mb - plan.spent_mb - (counted or 0.0))
        trainer.heap_pool = int(room * MiB)
        allocator.append(peak_memory.training_note(heap, room))
    if plan.trainable is not None:
        updater.choose = lambda _model: set(plan.trainable)
    trainer.step_shape = plan.shape()
    set_saves(model, plan.recompute, plan.lean)
    trainer.backend.micro_batch = plan.micro_batch if plan.micro_batch < plan.batch_size else 0
    if plan.bn_statistics == "frozen":
        trainer.backend.bn_mode = "eval"
    elif trainer.backend.micro_batch:
        statistics_per_micro_batch(trainer, len(bounds(cfg.batch_size, plan.micro_batch)))
    if not trainer.quiet:
        lines = plan_lines(plan, getattr(trainer, "memory_plan_cost", None), allocator,
                           trainer.run_memory.meter.level())
        print("\n".join(lines), file=sys.stderr, flush=True)
    return plan


def statistics_per_micro_batch(trainer, splits: int) -> None:
    """BatchNorm statistics trained on each of a step's `splits` micro-batches move at the momentum
    m' = 1 - (1 - m)^(1/splits), so that a step moves them as one update of the run's momentum m would
    (at m each, 4 micro-batches of a step moved them at an effective 0.34 for 0.1). The record states
    both (`bn_momentum`, `bn_momentum_micro_batch`)."""
    layers = [m for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats and m.momentum is not None]
    if not layers or splits < 2:
        return
    step = layers[0].momentum
    trainer.bn_step_momentum, trainer.bn_micro_momentum = step, 1 - (1 - step) ** (1 / splits)
    for m in layers:
        m.momentum = 1 - (1 - m.momentum) ** (1 / splits)


@contextlib.contextmanager
def allocator_while_training(trainer):
    """glibc's allocator as the plan chose it while the run trains and evaluates (a budgeted CPU run),
    and afterwards as budgeted runs plan under again, whatever ends the run: a later run in the same
    process (the Python API, a test) then measures its own growth, not pages the heap kept for it."""
    keep = getattr(trainer, "keep_heap", None)
    if keep is None:
        yield
        return
    kept = peak_memory.allocator_for_training(keep, getattr(trainer, "heap_pool", 0))
    try:
        yield
    finally:
        if kept:
            peak_memory.allocator_after_training()
