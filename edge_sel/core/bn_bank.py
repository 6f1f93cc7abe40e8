"""The file of a model's BatchNorm statistics kept per condition (engine/evaluation/bn_bank.py computes them):

    bn_bank.safetensors   per condition the device has seen (the source's first): a few of its
                          images (uint8, as stored) with their labels (banks written before labels
                          were kept have none), and the running mean and variance of every
                          BatchNorm layer for the weights saved beside it

It belongs to the weights it was computed for: a run writes it with its output model, promote
deploys the two together, and a model deployed without one leaves none behind. Its metadata names
the conditions and how many nights matched each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from edge_sel.core.checkpoint import write_safetensors
from edge_sel.errors import InputError, inside_file, parse_json, read_inside

BANK_FILE = "bn_bank.safetensors"


@dataclass
class SavedCondition:
    name: str
    images: torch.Tensor                              # uint8 N x C x H x W: what its statistics are estimated on
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]]   # BatchNorm layer -> (running mean, running var)
    nights: int = 1                                   # runs whose data matched it (its creation included)
    info: dict = field(default_factory=dict)          # where it came from (the run that created it, ...)
    fingerprint: tuple[torch.Tensor, torch.Tensor] | None = None   # what a batch's is compared with
    labels: torch.Tensor | None = None                # int64 N: what promote judges a condition by


def write_bank(path: Path, conditions: list[SavedCondition]) -> int:
    """Write the bank; returns its size in bytes."""
    tensors, meta = {}, []
    for i, c in enumerate(conditions):
        tensors[f"{i}.images"] = c.images.cpu().contiguous()
        if c.labels is not None:
            tensors[f"{i}.labels"] = c.labels.long().cpu().contiguous()
        tensors[f"{i}.fingerprint_mean"] = c.fingerprint[0].float().cpu().contiguous()
        tensors[f"{i}.fingerprint_var"] = c.fingerprint[1].float().cpu().contiguous()
        for layer, (mean, var) in c.stats.items():
            tensors[f"{i}.mean.{layer}"] = mean.detach().float().cpu().contiguous()
            tensors[f"{i}.var.{layer}"] = var.detach().float().cpu().contiguous()
        meta.append({"name": c.name, "nights": c.nights, "layers": list(c.stats), **c.info})
    write_safetensors(Path(path), tensors, metadata={"conditions": json.dumps(meta)})
    return Path(path).stat().st_size


def _conditions_meta(data: bytes):
    """The conditions' metadata a bank file's safetensors header holds (its first 8 bytes: the header's length)."""
    header = parse_json(data[8:8 + int.from_bytes(data[:8], "little")])
    return parse_json((header.get("__metadata__") or {})["conditions"])


def read_bank(directory: Path, input_shape: list[int], model: torch.nn.Module | None = None
              ) -> list[SavedCondition] | None:
    """The checkpoint's bank, or None when it has none. Every field is checked before use (a device
    reads banks it did not write): at least one condition, each with the same layers, 1-D finite
    means and non-negative finite variances of one size per layer, finite fingerprints, a whole
    number of nights, uint8 images of the model's input shape. A damaged file is refused with one
    line naming it; with `model`, the bank must fit its BatchNorm layers (check_bank_layers)."""
    path = Path(directory) / BANK_FILE
    if not inside_file(directory, BANK_FILE, "--checkpoint"):        # a link is refused
        return None
    try:
        data = read_inside(directory, BANK_FILE, "--checkpoint") or b""
        tensors = load(data)        # safetensors checks the header first; its metadata is read from it then
        meta = _conditions_meta(data)
        if not isinstance(meta, list) or not meta:
            raise ValueError("it keeps no condition")
        out = [_condition(i, m, tensors, input_shape) for i, m in enumerate(meta)]
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise InputError(f"{path}: unreadable or corrupt ({e.__class__.__name__}: {e})") from None
    layers = {n: v[0].shape for n, v in out[0].stats.items()}
    for c in out[1:]:
        if {n: v[0].shape for n, v in c.stats.items()} != layers:
            raise InputError(f"{path}: condition {c.name!r} keeps other BatchNorm layers than {out[0].name!r}")
    if model is not None:
        check_bank_layers(out, model, Path(directory))
    return out


def _condition(i: int, m: dict, tensors: dict, input_shape: list[int]) -> SavedCondition:
    if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("layers"), list):
        raise InputError(f"condition {i}: no name or layer list")
    name, nights = m["name"], m.get("nights")
    if isinstance(nights, bool) or not isinstance(nights, int) or nights < 1:
        raise InputError(f"condition {name!r}: nights must be a whole number >= 1, got {nights!r}")
    images = tensors[f"{i}.images"]
    if images.dtype != torch.uint8 or list(images.shape[1:]) != list(input_shape) or len(images) < 2:
        raise InputError(f"condition {name!r} holds {len(images)} {images.dtype} {list(images.shape[1:])} images, "
                         f"the model takes uint8 {list(input_shape)} (at least 2)")
    stats = {}
    for layer in m["layers"]:
        mean, var = tensors[f"{i}.mean.{layer}"], tensors[f"{i}.var.{layer}"]
        if mean.dim() != 1 or mean.shape != var.shape:
            raise InputError(f"condition {name!r}, layer {layer}: mean {list(mean.shape)} and variance "
                             f"{list(var.shape)} are not one vector each of one size")
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()) or bool((var < 0).any()):
            raise InputError(f"condition {name!r}, layer {layer}: non-finite or negative statistics")
        stats[layer] = (mean, var)
    if not stats:
        raise InputError(f"condition {name!r} keeps no BatchNorm layer")
    fingerprint = (tensors[f"{i}.fingerprint_mean"], tensors[f"{i}.fingerprint_var"])
    if not all(torch.isfinite(t).all() for t in fingerprint):
        raise InputError(f"condition {name!r}: non-finite fingerprint")
    labels = tensors.get(f"{i}.labels")
    if labels is not None and (labels.dtype != torch.int64 or list(labels.shape) != [len(images)]
                               or bool((labels < 0).any())):
        raise InputError(f"condition {name!r}: its labels are not one whole number >= 0 per image")
    info = {k: v for k, v in m.items() if k not in ("name", "nights", "layers")}
    return SavedCondition(name, images, stats, nights, info, fingerprint, labels)


def condition_names(directory: Path) -> list[str] | None:
    """The names of a checkpoint's bank's conditions (its metadata alone), None without a bank; the
    file is read as read_bank reads it, a link refused."""
    path = Path(directory) / BANK_FILE
    if not inside_file(directory, BANK_FILE, "--checkpoint"):
        return None
    try:
        data = read_inside(directory, BANK_FILE, "--checkpoint") or b""
        return [c["name"] for c in _conditions_meta(data)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: unreadable or corrupt ({e.__class__.__name__}: {e})") from None


def check_bank_layers(saved: list[SavedCondition], model: torch.nn.Module, where: Path) -> None:
    """A read bank fits the model: its layers are the model's BatchNorm layers, of the same sizes."""
    sizes = {n: m.num_features for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    kept = {n: int(mean.shape[0]) for n, (mean, _) in saved[0].stats.items()}
    if kept != sizes:
        missing = sorted(set(sizes) - set(kept)) or sorted(set(kept) - set(sizes))
        which = missing[0] if missing else next(n for n in kept if kept[n] != sizes[n])
        raise InputError(f"{Path(where) / BANK_FILE}: its BatchNorm statistics do not fit the model "
                         f"(layer {which}: bank {kept.get(which)}, model {sizes.get(which)} features)")
