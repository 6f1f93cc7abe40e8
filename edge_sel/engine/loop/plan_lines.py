"""A memory plan as a few short lines on the screen (the whole plan is config.json's `memory_plan`):
what trains and how the step runs against the budget, why it was chosen, what else the plan did, what
planning took."""

from __future__ import annotations

from edge_sel.core.lean_saves import lean_words
from edge_sel.core.memory import MiB
from edge_sel.core.words import plural


def shape_words(plan) -> str:
    """What trains and the step's shape: 'bn+classifier in micro-batches of 9, lean saves in the first
    7 blocks, BatchNorm statistics frozen'."""
    chosen = (plan.gains or {}).get("chosen") or "the run's set"
    shape = [f"micro-batches of {plan.micro_batch}" if plan.micro_batch < plan.batch_size else "whole batches"]
    shape += [f"{plural(len(plan.recompute), 'block')} recomputed"] if plan.recompute else []
    shape += [lean_words(plan.lean)] if plan.lean else []
    return f"{chosen} in {', '.join(shape)}, BatchNorm statistics {plan.statistics()}"


def plan_lines(plan, cost: dict | None, allocator: list[str], level_bytes: int | None) -> list[str]:
    level = "" if level_bytes is None else f"; {level_bytes / MiB:,.1f} MiB resident before training"
    lines = [f"{shape_words(plan)}: the training step counted {plan.counted['peak_mb']:.1f} MiB of the "
             f"{plan.budget_mb:g} MiB budget, beside {plan.spent_mb:.1f} MiB the process grew by before the "
             f"first step (measured) and a fifth held back; the budget bounds what the run adds, not the "
             f"process{level}"]
    gains = plan.gains or {}
    notes = list(plan.notes)
    if gains.get("reason"):
        lines.append(f"chose {gains['chosen']}: {gains['reason'].split('; candidates')[0]}")
        notes = notes[1:]        # the first note holds every candidate: config.json's memory_plan has them
    lines += notes + allocator
    if cost:
        child = "" if not cost.get("memory_plan_children") else (
            f", {cost['memory_plan_child_counts']} counted and step costs timed by a measuring child in "
            f"{cost['memory_plan_child_s']:.1f} s")
        # What the child counted this run is read back from the cache, not counted earlier.
        read = (cost.get("memory_plan_counts_read") or 0) - (cost.get("memory_plan_child_counts") or 0)
        lines.append(f"planned in {cost['memory_plan_wall_s']:.1f} s ({cost.get('memory_plan_counts') or 0} steps counted "
                     f"here{child}" + (f", {read} read from this device's earlier counts" if read > 0 else "") + ")")
    return [f"edge-sel: memory plan: {line}" for line in lines]
