"""Where a pretrain's weights start: the seed's initialisation, a local file (`--init-weights`) or
a model's published ImageNet weights (`--pretrained imagenet`). A start that cannot fit the model
is refused before any data loads, against the model built on the meta device; the classifier
alone may differ (made anew for the data's classes)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edge_sel.errors import InputError
from edge_sel.models.pretrained import SOURCES, imagenet_weights, weights_config
from edge_sel.models.registry import PRETRAINED
from edge_sel.models.spec import ModelSpec, build_from_spec, load_init_weights
from edge_sel.models.start_weights import classifier_tensors, describe_anew, fit_state, read_state_file, refuse_misfit

PRETRAINED_OPTION = "--pretrained"


def pretrained_config(spec: ModelSpec, pretrained: str | None):
    """The weights config of a `--pretrained` start, or None without one."""
    if pretrained is None:
        return None
    if pretrained not in SOURCES:
        raise InputError(f"{PRETRAINED_OPTION} {pretrained!r}: expected one of {', '.join(SOURCES)}")
    if spec.kind != "registry":
        raise InputError(f"{PRETRAINED_OPTION} {pretrained}: only built-in models have published weights here "
                         f"({', '.join(PRETRAINED)}); --model {spec.name} can start from a file with --init-weights")
    return weights_config(spec.name, f"{PRETRAINED_OPTION} {pretrained}")


def _meta_model(spec: ModelSpec, state: dict) -> nn.Module | None:
    """The spec's model on the meta device (no memory, no compute), with as many input channels as
    the weights' first tensor takes; None where the factory cannot build there."""
    try:
        with torch.device("meta"):
            model = build_from_spec(spec, 2, [3, 32, 32], check=False)
            first, tensor = next(iter(model.state_dict().items()))
            given = state.get(first)
            if given is not None and given.dim() == 4 and tensor.dim() == 4 and given.shape[1] != tensor.shape[1]:
                model = build_from_spec(spec, 2, [int(given.shape[1]), 32, 32], check=False)
        return model
    except InputError:
        raise
    except Exception:
        return None        # checked when the model is built for the data


def check_start(spec: ModelSpec, init_weights: Path | None, pretrained: str | None) -> None:
    """Refuse a start that cannot fit, before the output directory or the data are touched."""
    if init_weights is not None and pretrained is not None:
        raise InputError(f"{PRETRAINED_OPTION} {pretrained} and --init-weights {init_weights}: give one start")
    config = pretrained_config(spec, pretrained)
    if config is not None:
        label = f"{PRETRAINED_OPTION} {pretrained}"
        state = imagenet_weights(spec.name, label)[0]
    elif init_weights is not None:
        state, label = read_state_file(init_weights, "--init-weights"), f"--init-weights {init_weights}"
    else:
        return
    model = _meta_model(spec, state)
    classifier = config.classifier if config is not None else (classifier_tensors(model) if model is not None else ())
    if model is not None and classifier:       # the data's classes are unknown yet: the head is left out
        refuse_misfit(model.state_dict(), state, classifier, label)


def start_weights(model: nn.Module, spec: ModelSpec, num_classes: int, init_weights: Path | None,
                  pretrained: str | None) -> tuple[dict, str | None]:
    """The start loaded into `model`: (the card's record of it, a line naming the tensors made anew)."""
    config = pretrained_config(spec, pretrained)
    if config is not None:
        label = f"{PRETRAINED_OPTION} {pretrained}"
        state, origin = imagenet_weights(spec.name, label)
        anew = fit_state(model, state, label, config.classifier)
        line = describe_anew(anew, num_classes, state, "ImageNet's") if anew else None
        return {"pretrained": {**origin, **({"made_anew": anew} if anew else {})}}, line
    if init_weights is not None:
        loaded = load_init_weights(model, init_weights)
        anew = loaded.get("made_anew", [])
        state = read_state_file(init_weights, "--init-weights") if anew else {}
        line = describe_anew(anew, num_classes, state, f"{Path(init_weights).name}'s") if anew else None
        return {"init_weights": loaded}, line
    return {}, None
