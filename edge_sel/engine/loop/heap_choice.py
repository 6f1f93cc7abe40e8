"""Whether a budgeted CPU run keeps glibc's heap while it trains, measured on the plan's own step.

Unmapping freed blocks of 64 KiB and more keeps the resident size near the count, but every step then
faults its large tensors in afresh: Lite0 at 96 px under 1/4 of full fine-tuning's peak spent 2.1x the
joules of its unbudgeted twin, mobilenetv2 at 32 px under 80 MiB 2.2x. A kept heap runs as fast as no
budget, but how far it measures above the count is no multiple of it (1.05x to 2.4x across networks and
shapes, docs/memory-budget.md), so a fixed slack either gives the speed away or lets a run out of its
budget. Here the planned step runs on the run's images, once with blocks unmapped and twice with the
heap kept (the second step reuses what the first freed), and each window's resident high-water mark is
measured (engine/machine/peak_memory.py): the heap's extra is the difference. The heap is kept where
the count, the process's growth and that extra fit what the plan may use (the budget less its reserve
for kernels' own buffers). Kept in the probe cache per machine, model and shape."""

from __future__ import annotations

import time

import torch

from edge_sel.core.memory import MiB
from edge_sel.engine.machine import peak_memory, probe_cache
from edge_sel.engine.machine.device import random_streams_kept
from edge_sel.engine.machine.joule_plan import CACHE_FILE, shape_key, time_step
from edge_sel.engine.machine.memory_plan import MemoryPlan, usable
from edge_sel.engine.loop.trial_gain import normalised

HEAP_STEPS = 2          # steps with the heap kept: the second reuses the pages the first freed


def measure_heap(trainer, plan: MemoryPlan, trainable: set[str], pool: int) -> dict | None:
    """The planned step's measured resident peak with freed blocks unmapped and with the heap kept
    (bounded at its top by `pool` bytes), and each setting's step time; None where no resident
    high-water mark can be measured (no /proc, or clear_refs not writable)."""
    model, ds = trainer.model, trainer.train_ds
    shape = plan.shape()
    key = shape_key(model, trainer.memory_counter.input_shape, shape, trainable, trainer.device) + "|heap"
    entry = probe_cache.usable_entry(CACHE_FILE, key)
    if entry is not None:
        return {**entry, "measured_now": False}
    meter = trainer.run_memory.meter        # the run's own: its process peak folds in the probe's
    if meter.method != "rss-hwm":
        return None
    x, y = normalised(ds, trainer.mean, trainer.std,
                      torch.arange(plan.batch_size, device=ds.images.device) % max(1, len(ds)))
    losses = trainer.objective.losses
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}      # BatchNorm statistics move in train mode
    figures = {}
    try:
        with random_streams_kept(x.device), probe_cache.OtherLoad() as load:
            for setting, steps in (("unmapped", 1), ("heap", HEAP_STEPS)):
                peak_memory.release_free_heap()
                if setting == "heap":
                    peak_memory.allocator_for_training(True, pool)
                window, times = meter.begin(), []
                try:
                    for _ in range(steps):
                        t = time.perf_counter()
                        time_step(model, x, y, shape, trainable, losses)
                        times.append(time.perf_counter() - t)
                finally:
                    figures[f"{setting}_mb"] = meter.end(window)
                    figures[f"{setting}_step_s"] = round(min(times), 4) if times else None
                    if setting == "heap":
                        peak_memory.allocator_after_training()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.load_state_dict(state)
        peak_memory.release_free_heap()
    figures["extra_mb"] = round(max(0.0, figures["heap_mb"] - figures["unmapped_mb"]), 3)
    return {**probe_cache.keep(CACHE_FILE, key, figures, load.cpus), "measured_now": True}


def keep_heap(trainer, plan: MemoryPlan, trainable: set[str]) -> tuple[bool, int, str]:
    """Whether the run keeps the heap while training, the bytes of freed pages its top may keep, and
    the plan line's words; the heap probe's figures and cost go in the first record."""
    budget, counted = trainer.config.memory_budget_mb, plan.counted.get("peak_mb")
    room = max(0.0, budget - plan.spent_mb - (counted or 0.0))      # the budget's room beside the count
    pool = int(room * MiB)
    if counted is None:
        return False, 0, "freed blocks of 64 KiB and more go back to the system while training (no count)"
    if peak_memory.heap_fits(counted, budget - plan.spent_mb):
        return True, pool, (f"glibc's heap kept while training, with at most {room:.1f} MiB of freed pages at its "
                            f"top: the count fits the budget {peak_memory.HEAP_SLACK:g} times over")
    trainer.meter.begin("heap-probe")
    t0 = time.perf_counter()
    try:
        found = measure_heap(trainer, plan, trainable, pool)
    finally:
        energy = trainer.meter.end("heap-probe") or {}
    wall = time.perf_counter() - t0
    # Planning's cost, in the first record (a resumed run that measures again charges it there too).
    cost = trainer.__dict__.setdefault("memory_plan_cost", {}) if found is not None and found["measured_now"] else \
        getattr(trainer, "memory_plan_cost", None)
    if found is not None and found["measured_now"]:
        cost["memory_plan_wall_s"] = round((cost.get("memory_plan_wall_s") or 0.0) + wall, 3)
        if energy.get("energy_j") is not None:
            cost["memory_plan_energy_j"] = (cost.get("memory_plan_energy_j") or 0.0) + energy["energy_j"]
    if found is None:
        return False, 0, ("freed blocks of 64 KiB and more go back to the system while training: the heap's own "
                          "peak cannot be measured here, and the count does not fit the budget "
                          f"{peak_memory.HEAP_SLACK:g} times over")
    if cost is not None:
        cost.update({"memory_heap_extra_mb": found["extra_mb"], "memory_heap_step_s": found["heap_step_s"],
                     "memory_unmapped_step_s": found["unmapped_step_s"]})
    fits = counted * MiB + found["extra_mb"] * MiB <= usable(budget, plan.spent_mb)
    how = (f"the planned step measured {found['extra_mb']:.1f} MiB more with the heap kept than unmapped "
           f"({found['heap_step_s']:.2f} s a step against {found['unmapped_step_s']:.2f}"
           + ("" if found["measured_now"] else ", measured earlier on this device") + ")")
    if fits:
        return True, pool, (f"glibc's heap kept while training, with at most {room:.1f} MiB of freed pages at its "
                            f"top: {how}, which fits beside the count in the budget less its reserve")
    return False, 0, (f"freed blocks of 64 KiB and more go back to the system while training, so the resident size "
                      f"follows the count (slower steps): {how}, which does not fit beside the count in the budget "
                      f"less its reserve")
