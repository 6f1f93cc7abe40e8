"""BatchNorm-affine training: only the scale and shift of every BatchNorm layer (and, by default,
the classifier head) learn. The frozen tensors have requires_grad=False, so no weight gradient is
computed for them and the counted backward FLOPs fall; the input gradient still flows through every
layer above the first BatchNorm (that cost stays, and is counted)."""

from __future__ import annotations

from torch import nn

from edge_sel.methods.base import Updater
from edge_sel.methods.registry import UPDATERS
from edge_sel.models.blocks import head


class BatchNormAffine(Updater):
    name = "bn-affine"
    saves_compute = True
    static_set = True

    def __init__(self, train_head: bool = True):
        self.train_head = train_head

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        trainable = set()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                trainable |= {id(module.weight), id(module.bias)}
        if self.train_head:
            trainable |= {id(p) for p in head(model).parameters()}   # the classifier
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        total = sum(p.numel() for p in model.parameters())
        self.trained_share = sum(p.numel() for p in model.parameters() if p.requires_grad) / max(1, total)

    def end_epoch(self) -> dict:
        return {"grad_sparsity": 1 - self.trained_share, "frozen_frac": 1 - self.trained_share,
                "sparsity_kind": "structured", "compute_saved_by_sparsity": True,
                "trained_blocks": "batchnorm-affine" + ("+head" if self.train_head else "")}


def register() -> None:
    UPDATERS["bn-affine"] = lambda method: BatchNormAffine()
