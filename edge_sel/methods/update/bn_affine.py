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

    def trainable(self, model: nn.Module) -> set[str]:
        """The names of what trains: a memory budget counts and plans this set (without it, every
        parameter was counted: Lite0's norms at 1/10 named 101.6 MiB where their step counts 22.2)."""
        chosen = set()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                chosen |= {id(module.weight), id(module.bias)}
        if self.train_head:
            chosen |= {id(p) for p in head(model).parameters()}   # the classifier
        return {n for n, p in model.named_parameters() if id(p) in chosen}

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        trainable = self.trainable(model)
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
        total = sum(p.numel() for p in model.parameters())
        self.trained_share = sum(p.numel() for p in model.parameters() if p.requires_grad) / max(1, total)

    def end_epoch(self) -> dict:
        return {"grad_sparsity": 1 - self.trained_share, "frozen_frac": 1 - self.trained_share,
                "sparsity_kind": "structured", "compute_saved_by_sparsity": True,
                "trained_blocks": "batchnorm-affine" + ("+head" if self.train_head else "")}


def register() -> None:
    UPDATERS["bn-affine"] = lambda method: BatchNormAffine()
