"""The loop's counted memory: a counter of the run's steps (core/memory.py) with the run's optimizer,
the shape its steps take (micro-batches, recomputed blocks, BatchNorm statistics), and the plan that
fits a --memory-budget (engine/machine/memory_plan.py) applied to the run."""

from __future__ import annotations

import copy
import sys
import time
from functools import partial

import torch

from edge_sel.backends.torch_backend import freeze_batchnorm_stats, make_optimizer
from edge_sel.config import TrainConfig
from edge_sel.core.memory import MiB, MemoryCounter, StepShape
from edge_sel.core.recompute import set_recomputed
from edge_sel.engine.machine.device import random_streams_kept
from edge_sel.engine.machine.memory_plan import MemoryPlan, fit_shape, plan_memory, usable
from edge_sel.engine.machine.peak_memory import return_freed_memory
from edge_sel.errors import InputError

PROBE_SAMPLES = 64          # local images whose gradients estimate what each tensor would gain


def memory_counter(cfg: TrainConfig, model, input_shape, device: torch.device) -> tuple[MemoryCounter, StepShape]:
    """A counter of the run's steps on `device` (on a CPU with its convolutions' own buffers)."""
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    shape = StepShape(cfg.batch_size, bn_statistics="frozen" if cfg.bn_mode == "eval" else "train")
    kernels = "cpu" if torch.device(device).type == "cpu" else "none"
    return MemoryCounter(model, input_shape, optimizer, kernels=kernels), shape


def gain_probe(model, ds, mean, std, shape: StepShape, samples: int, objective_losses, flops) -> tuple[dict, dict]:
    """Each parameter's expected gain: its squared gradient summed over micro-batches of the first
    `samples` local images (an empirical Fisher information on the device's own data), run in the
    planned shape of a step that trains everything. Returns the gains and what the probe cost."""
    images = ds.pixels(torch.arange(min(samples, len(ds)), device=ds.images.device)).float().div_(255)
    mean_t = torch.as_tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=images.device).view(1, -1, 1, 1)
    x, y = (images - mean_t) / std_t, ds.labels[:samples]
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    state = copy.deepcopy(model.state_dict())          # the probe leaves weights and statistics as they were
    gains = {n: 0.0 for n in params}
    t0 = time.perf_counter()
    model.train()
    if shape.bn_statistics == "frozen":
        freeze_batchnorm_stats(model)
    set_recomputed(model, shape.recompute)
    total = 0
    with random_streams_kept(images.device):
        try:
            for p in params.values():
                p.requires_grad_(True)
            for lo in range(0, len(y), shape.chunk):
                model.zero_grad(set_to_none=True)
                objective_losses(model(x[lo:lo + shape.chunk]), y[lo:lo + shape.chunk]).mean().backward()
                for n, p in params.items():
                    if p.grad is not None:
                        gains[n] += float(p.grad.pow(2).sum())
                f, b = flops.train_step(len(y[lo:lo + shape.chunk]))
                total += f + b
        finally:
            model.zero_grad(set_to_none=True)
            set_recomputed(model, ())
            for n, p in params.items():
                p.requires_grad_(flags[n])
            model.load_state_dict(state)
    return gains, {"source": "probe: squared gradients on local images", "samples": int(len(y)),
                   "flops": int(total), "wall_s": round(time.perf_counter() - t0, 3)}


def shipped_gains(model, memory) -> tuple[dict, dict]:
    """Gains from the Fisher information the warmup ships (source data), where no probe fits; else
    each tensor's size."""
    fisher = getattr(memory, "fisher", None) or {}
    names = [n for n, _ in model.named_parameters()]
    if fisher and all(n in fisher for n in names):
        return ({n: float(fisher[n].sum()) for n in names},
                {"source": "the checkpoint's Fisher information (source data): no probe step fits the budget"})
    return ({n: float(p.numel()) for n, p in model.named_parameters()},
            {"source": "parameter counts: no probe step fits the budget and the checkpoint ships no Fisher"})


def forward_batch_that_fits(counter: MemoryCounter, batch: int, budget_mb: float, kept: int) -> int:
    """The batch of forward-only passes (evaluation, scoring), halved from `batch` until its count fits
    the budget beside the `kept` bytes training keeps alive between its steps: the optimizer's state
    and the last step's gradients (counted alone, a 200 MB plan's evaluation at batch 16 fitted, and
    measured 224 MiB after an epoch)."""
    while batch > 1 and counter.count_forward(batch).peak + kept > usable(budget_mb):
        batch = max(1, batch // 2)
    return batch


def plan_run_memory(trainer) -> MemoryPlan | None:
    """The run's memory plan under --memory-budget (a resume keeps the one in its config), applied:
    the step's shape, the backend's micro-batch, recomputed blocks, frozen statistics, what trains."""
    cfg = trainer.config
    if cfg.memory_budget_mb is None:
        return None
    if cfg.backend != "torch":
        raise InputError("--memory-budget: needs --backend torch (ORT artifacts fix what trains when exported)")
    model, updater = trainer.model, trainer.updater
    bn = "frozen" if cfg.bn_mode == "eval" else "train"
    if trainer.device.type == "cpu":
        # Before the gain probe too: under glibc's own threshold the probe's freed blocks stayed in the
        # heap, resident for the rest of the run (a 200 MB plan measured 222 MiB training, 294 evaluating).
        return_freed_memory()
    if cfg.memory_plan is not None:
        plan = MemoryPlan.from_json(cfg.memory_plan)
    else:
        counter = trainer.memory_counter
        everything = {n for n, _ in model.named_parameters()}
        if updater.name == "budget" and counter.count(StepShape(cfg.batch_size, bn_statistics=bn), everything).peak \
                <= usable(cfg.memory_budget_mb):
            plan = plan_memory(counter, model, cfg.batch_size, cfg.memory_budget_mb, everything, bn)
            plan.trainable = sorted(everything)
            plan.notes.insert(0, "everything trains: the whole step fits the budget")
        elif updater.name == "budget":
            # The probe steps no optimizer: its state is not part of what the probe keeps.
            room = usable(cfg.memory_budget_mb) + counter.count(StepShape(2, bn_statistics="frozen"), everything).optimizer
            probe = fit_shape(counter, model, cfg.batch_size, room, everything, bn)
            if probe is None:
                gains, source = shipped_gains(model, trainer.memory)
            else:
                gains, source = gain_probe(model, trainer.train_ds, trainer.mean, trainer.std, probe[0],
                                           min(PROBE_SAMPLES, len(trainer.train_ds)),
                                           trainer.objective.losses, trainer.flops)
                trainer.ledger.add_scoring(source["samples"], source["flops"])
            plan = plan_memory(counter, model, cfg.batch_size, cfg.memory_budget_mb, bn_statistics=bn,
                               gains=gains, gains_source=source)
        else:
            trainable = updater.trainable(model) if hasattr(updater, "trainable") else None
            plan = plan_memory(counter, model, cfg.batch_size, cfg.memory_budget_mb, trainable, bn)
        cfg.memory_plan = plan.to_json()
    kept = int((plan.counted.get("optimizer_mb", 0) + plan.counted.get("gradients_mb", 0)) * MiB)
    trainer.eval_batch_size = forward_batch_that_fits(trainer.memory_counter, trainer.eval_batch_size,
                                                      cfg.memory_budget_mb, kept)
    cfg.eval_batch_size = trainer.eval_sets.batch_size = trainer.scoring.batch_size = trainer.eval_batch_size
    if plan.trainable is not None:
        updater.choose = lambda _model: set(plan.trainable)
    trainer.step_shape = plan.shape()
    set_recomputed(model, plan.recompute)
    trainer.backend.micro_batch = plan.micro_batch if plan.micro_batch < cfg.batch_size else 0
    if plan.bn_statistics == "frozen":
        trainer.backend.bn_mode = "eval"
    if not trainer.quiet:
        print(f"edge-sel: {plan.line()}" + "".join(f"; {n}" for n in plan.notes), file=sys.stderr, flush=True)
    return plan
