"""What a training step minimises: the per-sample loss strategies observe (cross-entropy with label
smoothing) plus optional penalties on the weights, such as the Fisher-weighted pull toward the
source model (EWC). The third part of a method, beside Strategy (which samples) and Updater (which
parameters): a penalty composes with every strategy and updater instead of branching inside the loop.

A penalty runs no forward pass over data: its cost is elementwise arithmetic on the weights, counted
per element (see `FisherPenalty.flops`), and reported apart from the forward and backward FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

# Counted per covered weight entry. Forward: difference to the source, square, Fisher weight, sum.
# Backward: the incoming gradient times the Fisher weight, times 2, times the difference, and the
# add into the parameter's gradient. The scalar weight lambda/2 is folded into the Fisher once.
PENALTY_FORWARD_FLOPS_PER_ENTRY = 4
PENALTY_BACKWARD_FLOPS_PER_ENTRY = 4


class FisherPenalty:
    """(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2 over the parameters that train this step.

    F is the source memory's diagonal Fisher information divided by its mean over every entry the
    file holds, so that lambda reads in L2-SP units (lambda * mean F = lambda) whatever the model's or
    dataset's raw Fisher scale; theta* are the source weights. The Fisher is heavy-tailed (a few
    entries hundreds of times the mean), so each entry's weight lambda * F_i is capped at `max_weight`
    (the engine passes 1 / learning rate: beyond it one plain SGD step would carry the entry past the
    source weight, and the pull only oscillates or diverges). Parameters without a Fisher entry, or
    frozen this step (requires_grad False), are not penalised and cost nothing."""
    name = "fisher"

    def __init__(self, model: nn.Module, fisher: dict[str, torch.Tensor], source: dict[str, torch.Tensor],
                 weight: float, max_weight: float = float("inf")):
        self.weight = float(weight)
        entries = sum(f.numel() for f in fisher.values())
        mean = sum(float(f.double().sum()) for f in fisher.values()) / max(1, entries)
        self.fisher_mean = mean
        self.capped = 0         # entries whose weight the cap lowered
        self.terms: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for name, p in model.named_parameters():
            if name not in fisher or name not in source:
                continue
            f, anchor = fisher[name], source[name]
            if f.shape != p.shape or anchor.shape != p.shape:
                raise ValueError(f"Fisher or source entry {name} has shape {list(f.shape)}, the model's "
                                 f"{list(p.shape)}")
            # Same device and memory format as the parameter, so the arithmetic below runs as one
            # elementwise kernel per tensor.
            like = dict(device=p.device, dtype=torch.float32)
            entry_weight = (f.to(**like) * (self.weight / mean if mean > 0 else 0.0))
            self.capped += int((entry_weight > max_weight).sum())
            # Halved here: the penalty is (1/2) sum w_i d_i^2, its gradient w_i d_i.
            half = entry_weight.clamp(max=max_weight) / 2
            self.terms.append((p, half.to(memory_format=_format_of(p)),
                               anchor.to(**like).to(memory_format=_format_of(p))))

    def __call__(self) -> torch.Tensor | None:
        total = None
        for p, f, anchor in self.terms:
            if not p.requires_grad:
                continue
            term = (f * (p.float() - anchor).square()).sum()
            total = term if total is None else total + term
        return total

    def entries(self) -> int:
        """Weight entries penalised this step (those that train)."""
        return sum(p.numel() for p, _, _ in self.terms if p.requires_grad)

    def flops(self) -> int:
        return (PENALTY_FORWARD_FLOPS_PER_ENTRY + PENALTY_BACKWARD_FLOPS_PER_ENTRY) * self.entries()


def _format_of(p: torch.Tensor) -> torch.memory_format:
    if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class Objective:
    """Per-sample cross-entropy (what the backend returns, what strategies read) plus penalties."""

    def __init__(self, label_smoothing: float = 0.0, penalties: list | None = None):
        self.label_smoothing = label_smoothing
        self.penalties = list(penalties or [])

    @property
    def name(self) -> str:
        return "+".join(["cross-entropy", *(p.name for p in self.penalties)])

    def losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y, reduction="none", label_smoothing=self.label_smoothing)

    def penalty(self) -> torch.Tensor | None:
        """The penalties' sum on the current weights (None without any, or with nothing to train)."""
        total = None
        for penalty in self.penalties:
            term = penalty()
            if term is not None:
                total = term if total is None else total + term
        return total

    def penalty_flops(self) -> int:
        """Counted FLOPs of this step's penalties (forward and backward), zero without any."""
        return sum(p.flops() for p in self.penalties)
