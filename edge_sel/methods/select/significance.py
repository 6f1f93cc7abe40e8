"""How much a sample is worth computing, from what the hardness store holds (stale, free).

Scores lie in [0, 1] so one threshold scale fits every dataset and class count; a sample never
trained in this run scores 1, the most significant a sample can be."""

from __future__ import annotations

import math

import torch

from edge_sel.methods.select.hardness import HardnessStore

LOSS_WEIGHT, ENTROPY_WEIGHT = 0.7, 0.3   # AST's mix of cross-entropy and predictive entropy
UNSEEN = 1.0


def loss_entropy(store: HardnessStore) -> torch.Tensor:
    """0.7 * (1 - p_y) + 0.3 * H / ln C at the last visit. 1 - exp(-CE) = 1 - p_y maps the unbounded
    loss monotonically into [0, 1]; the entropy is divided by its maximum."""
    miss = 1 - torch.exp(-store.last_loss)
    spread = store.last_entropy / math.log(max(store.num_classes, 2))
    s = LOSS_WEIGHT * miss + ENTROPY_WEIGHT * spread.clamp(0, 1)
    return torch.where(store.seen, s, torch.full_like(s, UNSEEN))


def dih(store: HardnessStore) -> torch.Tensor:
    """1 - exp(-r) of the moving average r of the store's signal (a loss average maps like a loss)."""
    s = 1 - torch.exp(-store.dih.clamp_min(0))
    return torch.where(store.dih_known, s, torch.full_like(s, UNSEEN))


def likely_mislabelled(store: HardnessStore) -> torch.Tensor:
    """Samples whose last visit confidently predicted another class than their label: the predicted
    class's probability reached that class's threshold, the mean probability the model gives its own
    label over the samples labelled with it (the confident-joint rule of confident learning,
    Northcutt et al. 2021, on the stale visit values)."""
    known = store.seen & (store.label >= 0)
    labels = store.label.clamp_min(0)
    p_label = torch.exp(-store.last_loss)
    c = store.num_classes
    total = torch.zeros(c, device=p_label.device).index_add_(0, labels[known], p_label[known])
    count = torch.zeros(c, device=p_label.device).index_add_(0, labels[known], torch.ones_like(p_label[known]))
    threshold = torch.where(count > 0, total / count.clamp_min(1), torch.ones_like(total))
    pred = store.last_pred.clamp_min(0)
    return known & (store.last_pred != store.label) & (store.last_conf >= threshold[pred])


def learnability(store: HardnessStore) -> torch.Tensor:
    """1 - p_y at the last visit, except 0 for a sample that looks mislabelled: high loss is worth
    computing when the label can be learned, and worthless (harmful) when the label is wrong."""
    miss = 1 - torch.exp(-store.last_loss)
    s = torch.where(likely_mislabelled(store), torch.zeros_like(miss), miss)
    return torch.where(store.seen, s, torch.full_like(s, UNSEEN))


SIGNIFICANCE = {"loss-entropy": loss_entropy, "dih": dih, "learnability": learnability}


def seed_significance(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The seed's raw score from the current batch: 0.7 * CE + 0.3 * H, H = -sum p log(p + 1e-8)."""
    logits = logits.detach().float()
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    p = torch.softmax(logits, dim=1)
    h = -(p * torch.log(p + 1e-8)).sum(1)
    return LOSS_WEIGHT * ce + ENTROPY_WEIGHT * h
