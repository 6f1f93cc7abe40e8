"""BatchNorm statistics re-estimation (Schneider et al. 2020): the cheapest lever against a shift in
the inputs. Forward passes only, on unlabelled local images, no gradient and no weight changes: each
BatchNorm layer's running mean and variance become the average over those images (momentum None),
then the layer's momentum is restored for whatever training follows."""

from __future__ import annotations

import sys

import torch
from torch import nn

from edge_sel.data import BatchLoader, IndexedDataset


# What a record and the console say when a model has no running statistics to re-estimate
# (GroupNorm, LayerNorm or no normalisation): nothing is run and nothing is charged.
NOT_APPLICABLE = "not applicable: the model has no BatchNorm layers"


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def not_applicable(model: nn.Module) -> dict | None:
    """The record fields of a --bn-adapt that cannot apply to `model` (None when it can), said once
    on stderr."""
    if batchnorm_layers(model):
        return None
    print(f"edge-sel: --bn-adapt: {NOT_APPLICABLE}; nothing re-estimated", file=sys.stderr, flush=True)
    return {"bn_adapt_samples": 0, "flops_bn_adapt": 0, "bn_adapt": NOT_APPLICABLE}


@torch.inference_mode()
def reestimate_bn(model: nn.Module, ds: IndexedDataset, positions: torch.Tensor, mean, std,
                  batch_size: int = 256, memory_format: torch.memory_format = torch.contiguous_format) -> list[int]:
    """Running statistics from the images at `positions` (no augmentation). Returns the batch
    sizes run, for the FLOP count."""
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None               # cumulative average over every batch below
    model.train()
    sizes = []
    loader = BatchLoader(ds, mean, std, batch_size, augment=False, generator=torch.Generator(),
                         memory_format=memory_format)
    try:
        for batch in loader.batches(positions):
            model(batch.x)
            sizes.append(len(batch))
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return sizes


def with_anchors(local: IndexedDataset, positions: torch.Tensor, anchors: IndexedDataset, count: int,
                 draw: torch.Generator) -> tuple[IndexedDataset, torch.Tensor]:
    """`--bn-anchor-share`: the local images at `positions` and `count` replay anchors as one set, in
    a seeded shuffled order, so every re-estimation batch holds both (each batch weighs the same in
    the cumulative average). Returns the set and the positions to run, all of it."""
    device = local.images.device
    picked = torch.randperm(len(anchors), generator=draw)[:count]
    mixed = IndexedDataset(torch.cat([local.pixels(positions.to(device)), anchors.images[picked].to(device)]),
                           torch.cat([local.labels[positions.to(device)], anchors.labels[picked].to(device)]),
                           torch.cat([local.index[positions.to(device)], anchors.index[picked].to(device)]),
                           list(local.class_names), name=f"{local.name} + anchors", augment=dict(local.augment))
    order = torch.randperm(len(mixed), generator=draw).to(device)
    return mixed, order
