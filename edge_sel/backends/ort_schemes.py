"""Update schemes: which parameter tensors an artifact set trains. ORT fixes this at export time
(one artifact set per scheme), and its gradient builder prunes the backward graph to match."""

from __future__ import annotations

from torch import nn

from edge_sel.errors import InputError
from edge_sel.models.blocks import model_blocks

SCHEMES = ("full", "last-block", "classifier", "bias")
# What a --memory-budget run's plan chose to train (`--sparsity budget`), from that run's config.json;
# named explicitly, never part of `all`.
PLANNED = "planned"

SCHEME_NOTES = {
    "full": "every weight and bias",
    "last-block": "the last feature block and the head; backprop stops there, so earlier blocks "
                  "cost forward compute only",
    "classifier": "the head only; no backward through the feature blocks",
    "bias": "biases and BatchNorm shifts only; saves optimizer and gradient memory but little "
            "compute, because the input gradient still flows back through every layer",
    PLANNED: "what the run's memory plan chose to train under its --memory-budget (config.json memory_plan)",
}


def _names_in(model: nn.Module, modules: list[nn.Module]) -> set[str]:
    ids = {id(p) for m in modules for p in m.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def trainable_names(model: nn.Module, scheme: str, planned: list[str] | None = None) -> list[str]:
    """Parameter names (state_dict order) that `scheme` trains on `model` (`planned`: the names a
    memory plan chose, for the `planned` scheme)."""
    names = [name for name, _ in model.named_parameters()]
    if scheme == PLANNED and planned is not None:
        chosen = set(planned)
    elif scheme == "full":
        chosen = set(names)
    elif scheme == "last-block":
        chosen = _names_in(model, model_blocks(model)[-2:])
    elif scheme == "classifier":
        chosen = _names_in(model, model_blocks(model)[-1:])
    elif scheme == "bias":
        chosen = {n for n in names if n.endswith(".bias")}
    else:
        raise InputError(f"--scheme: unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return [n for n in names if n in chosen]


def set_trainable(model: nn.Module, names) -> None:
    """Make the torch model's requires_grad flags mirror an artifact set's trainable tensors, so
    the engine's counted FLOPs are those of the equivalent (equally pruned) torch graph."""
    keep = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)


def parse_schemes(values) -> list[str]:
    """--scheme may repeat or hold a comma-separated list; `all` means every scheme."""
    out: list[str] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if part == "all":
                out.extend(SCHEMES)
            elif part in SCHEMES or part == PLANNED:
                out.append(part)
            else:
                raise InputError(f"--scheme: unknown scheme {part!r}; choose from {', '.join(SCHEMES)} or all")
    return list(dict.fromkeys(out))
