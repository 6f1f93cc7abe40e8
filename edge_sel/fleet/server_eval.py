"""The server's held-out evaluation of the global model."""

from __future__ import annotations

import torch

from edge_sel.core.checkpoint import ModelCard
from edge_sel.data import IndexedDataset
from edge_sel.data.split import stratified_take
from edge_sel.engine.evaluation.evaluate import accuracy, predict_dataset
from edge_sel.engine.runs.data_options import DataOptions, check_compatible
from edge_sel.errors import InputError
from edge_sel.fleet.settings import ServerSettings
from edge_sel.models import model_for_card


def held_out_set(settings: ServerSettings, card: ModelCard) -> IndexedDataset:
    """The evaluation dataset's test split (never trained on by warmup or clients)."""
    if not settings.eval_dataset:
        raise InputError("--eval-dataset: the held-out dataset for the global model is required")
    data = DataOptions(settings.eval_dataset, settings.eval_data_dir or None)
    splits = data.load()
    check_compatible(card, splits, settings.checkpoint or settings.out_dir)
    test = splits.test
    if settings.eval_subset and settings.eval_subset < len(test):
        test = test.subset(stratified_take(test, settings.eval_subset, seed=0))   # class-balanced
    return test


def global_accuracy(model: torch.nn.Module, card: ModelCard, test: IndexedDataset) -> float | None:
    """The global model with its own BatchNorm statistics: a device's bank of statistics per
    condition (--bn-conditions) belongs to that device's weights and images, never leaves it, and
    would not fit the round's averaged weights."""
    model.eval()
    logits = predict_dataset(model, test, card.mean, card.std, batch_size=500)
    return accuracy(logits, test.labels)


def fresh_model(card: ModelCard) -> torch.nn.Module:
    return model_for_card(card)
