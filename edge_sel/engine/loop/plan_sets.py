"""The trainable sets `--sparsity budget` chooses among by their fixed names (the transfer bench's
methods, bench/transfer.py), and the BatchNorm statistics mode each trains in."""

from __future__ import annotations

import torch

from edge_sel.methods.update.fixed_sets import bias_norm_names, classifier_names, sparse_names
from edge_sel.models.lite_residual import NAME

LAST_K = 2               # the transfer bench's last-k
SPARSE_SHARE = 0.1       # the transfer bench's sparse update (MCUNetV3's shape)


def fixed_sets(model, gains: dict) -> list[tuple[str, set[str]]]:
    """The fixed sets the transfer bench runs, by its names (bench/transfer.py); sparse's is None
    without `gains` (its tensors are chosen by them)."""
    head = classifier_names(model)
    norms = {f"{m}.{n}" if m else n for m, module in model.named_modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine
             for n, _ in module.named_parameters(recurse=False)}
    return [("classifier", head), ("bn+classifier", head | norms), ("bias+bn+classifier", bias_norm_names(model)),
            (f"last-{LAST_K}", classifier_names(model, LAST_K)),
            ("sparse", None if gains is None else sparse_names(model, gains, SPARSE_SHARE)),
            ("full FT", {n for n, _ in model.named_parameters()})]


def run_chose_statistics(cfg) -> bool:
    """Whether the run named its BatchNorm statistics (--bn-stats, --bn-mode, --bn-conditions): then
    every candidate trains in that mode."""
    return cfg.bn_stats is not None or cfg.bn_mode is not None or bool(cfg.bn_conditions)


def candidate_statistics(model, bn: str, chosen_by_run: bool, trainable: set[str]) -> tuple[str, bool]:
    """The statistics mode a candidate trains in, and whether its plan may freeze them below
    MIN_STATISTICS images a micro-batch. The run's own where it chose one; else, as measured
    (docs/transfer.md), frozen where the set trains no weight before the last LAST_K blocks (biases,
    norms, the head, lite residual branches: Lite0's classifier from ImageNet weights at 128 px 74.2%
    frozen, 55.5% re-estimated, 5 paired seeds; the classifier at 64 px 54.0% against 29.3%), and re-estimated,
    never frozen, where it trains earlier weights (under frozen statistics at lr 0.01 full fine-tuning
    and a sparse set of early blocks' weights learned nothing at 64 px: 10-11% against 36.7%)."""
    if chosen_by_run:
        return bn, True
    late = classifier_names(model, LAST_K)
    params = dict(model.named_parameters())
    early = [n for n in trainable if n in params and params[n].dim() > 1 and n not in late and f"{NAME}." not in n]
    return ("train", False) if early else ("frozen", True)


def distinct(sets: list[tuple[str, set[str] | None]]) -> list[tuple[str, set[str]]]:
    """The sets by their first name, once each: a model without convolution biases (Lite0, edgecnn)
    has biases and norms that are its norms, and the same set counted, timed and tried twice only
    doubled planning's cost."""
    seen, out = set(), []
    for name, names in sets:
        if names is not None and frozenset(names) not in seen:
            seen.add(frozenset(names))
            out.append((name, names))
    return out
