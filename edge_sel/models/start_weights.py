"""Starting weights onto a model: a local file read without running its code, and a fit in which
every tensor must match exactly except the classifier's, which is made anew when the weights were
trained for other classes (or hold none)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edge_sel.errors import InputError
from edge_sel.models.blocks import named_blocks


def read_state_file(path, label: str) -> dict[str, torch.Tensor]:
    """A safetensors file or a torch state dict (weights_only=True), or the state dict a
    training-script checkpoint wraps under "state_dict"."""
    path = Path(path)
    if path.is_dir():
        hint = f"; its weights are {path / 'model.safetensors'}" if (path / "model.safetensors").is_file() else ""
        raise InputError(f"{label} {path}: a directory, not a weights file{hint}")
    if not path.is_file():
        raise InputError(f"{label} {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{label} {path}: unreadable ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{label} {path}: not a state dict of tensors")
    return state


def first_mismatch(expected: dict, given: dict) -> str | None:
    """The first tensor that keeps weights from loading, with both shapes (torch's own message
    begins with a heading that names none)."""
    for name, tensor in expected.items():
        if name not in given:
            return f"{name} {tuple(tensor.shape)} is missing from the weights"
        if tuple(given[name].shape) != tuple(tensor.shape):
            return f"{name}: the weights hold {tuple(given[name].shape)}, the model has {tuple(tensor.shape)}"
    extra = [name for name in given if name not in expected]
    return f"{extra[0]} {tuple(given[extra[0]].shape)} is in the weights but not in the model" if extra else None


def classifier_tensors(model: nn.Module) -> tuple[str, ...]:
    """The state-dict names of the model's classifier (its last block, models.blocks), or none for a
    model that is one block: there, nothing would be left to start from."""
    blocks = named_blocks(model)
    if len(blocks) < 2:
        return ()
    name = blocks[-1][0]
    return tuple(f"{name}.{k}" if name else k for k in blocks[-1][1].state_dict())


def made_anew(expected: dict, state: dict, classifier: tuple[str, ...]) -> list[str]:
    """The classifier's tensors that the weights lack or hold in another shape."""
    return [k for k in classifier
            if k in expected and (k not in state or tuple(state[k].shape) != tuple(expected[k].shape))]


def refuse_misfit(expected: dict, state: dict, classifier: tuple[str, ...], label: str) -> list[str]:
    """The tensors to make anew, or a one-line refusal naming the first other tensor that does not
    fit. `expected`: the model's state dict (its shapes; a meta-device model's will do)."""
    anew = made_anew(expected, state, classifier)
    dropped = [k for k in classifier if k in state and k in anew]
    mismatch = first_mismatch({k: v for k, v in expected.items() if k not in anew},
                              {k: v for k, v in state.items() if k not in dropped})
    if mismatch:
        raise InputError(f"{label}: does not fit the model ({mismatch})")
    return anew


def fit_state(model: nn.Module, state: dict, label: str, classifier: tuple[str, ...] | None = None) -> list[str]:
    """`state` loaded into `model`; the classifier's tensors that do not fit keep the model's fresh
    initialisation. Returns their names (empty when the whole state fitted)."""
    classifier = classifier_tensors(model) if classifier is None else classifier
    anew = refuse_misfit(model.state_dict(), state, classifier, label)
    model.load_state_dict({k: v for k, v in state.items() if k not in anew}, strict=not anew)
    return anew


def describe_anew(anew: list[str], num_classes: int, state: dict, what: str = "the weights'") -> str:
    """One line: which tensors were made anew, and the head the weights had."""
    held = next((tuple(state[k].shape) for k in anew if k in state and state[k].dim() == 2), None)
    dropped = f"{what} {held[0]}-class head dropped" if held else f"{what} file holds no classifier"
    return f"{', '.join(anew)} made anew for {num_classes} classes ({dropped})"
