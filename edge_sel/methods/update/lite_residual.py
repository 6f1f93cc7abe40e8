"""TinyTL's lite residual learning as an updater (`--sparsity lite-residual`): the branches of
models/lite_residual.py beside every block but the classifier, trained with every bias and the
classifier (TinyTL-L+B); every other weight is frozen. The branches are added before the optimizer, the
probes and the meta-device counter see the model, so the counted memory is the real step's.
"""

from __future__ import annotations

from torch import nn

from edge_sel.methods.registry import UPDATERS
from edge_sel.methods.update.fixed_sets import FixedSet, classifier_names
from edge_sel.models.lite_residual import NAME, add_residuals


def residual_names(model: nn.Module) -> set[str]:
    """The branches' parameters, every bias and the classifier: what TinyTL-L+B trains."""
    names = classifier_names(model)
    for n, _ in model.named_parameters():
        if f"{NAME}." in n or n.endswith(".bias") or n == "bias":
            names.add(n)
    return names


class LiteResidualUpdater(FixedSet):
    """The fixed set above; `prepare` adds the branches before the optimizer and the counter see the model."""

    def __init__(self):
        super().__init__("lite-residual", residual_names)

    def prepare(self, model: nn.Module, input_shape) -> None:
        add_residuals(model, input_shape)


def register() -> None:
    UPDATERS["lite-residual"] = lambda method: LiteResidualUpdater()
