"""Building a gated plan from a strategy's plan: keep some candidates, compose loss weights, and
carry the strategy's info (e.g. its curriculum stage) into the record."""

from __future__ import annotations

import torch

from edge_sel.methods.base import Plan


def take(plan: Plan, keep: torch.Tensor, weights: torch.Tensor | None = None, info: dict | None = None) -> Plan:
    """Candidates `keep` (indices into plan.positions, in the order given) with the base plan's
    weights times the gate's `weights` (one per kept sample, or None)."""
    keep = keep.to(plan.positions.device)
    base = None if plan.weights is None else plan.weights.to(keep.device)[keep]
    if weights is not None:
        weights = weights.to(keep.device).float()
        base = weights if base is None else base * weights
    return Plan(plan.positions[keep], base, {**plan.info, **(info or {})})


def keep_all(plan: Plan, info: dict | None = None) -> Plan:
    return Plan(plan.positions, plan.weights, {**plan.info, **(info or {})})


def self_normalised(inverse_p: torch.Tensor) -> torch.Tensor:
    """1/p weights scaled to mean 1: the expected gradient keeps the full data's direction, and the
    step size stays that of an unweighted batch."""
    return inverse_p / inverse_p.mean().clamp_min(1e-12) if len(inverse_p) else inverse_p
