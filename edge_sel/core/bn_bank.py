"""The file of a model's BatchNorm statistics kept per condition (engine/bn_bank.py computes them):

    bn_bank.safetensors   per condition the device has seen (the source's first): a few of its
                          unlabelled images (uint8, as stored) and the running mean and variance of
                          every BatchNorm layer for the weights saved beside it

It belongs to the weights it was computed for: a run writes it with its output model, promote
deploys the two together, and a model deployed without one leaves none behind. Its metadata names
the conditions and how many nights matched each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from edge_sel.core.checkpoint import write_safetensors
from edge_sel.errors import InputError

BANK_FILE = "bn_bank.safetensors"


@dataclass
class SavedCondition:
    name: str
    images: torch.Tensor                              # uint8 N x C x H x W: what its statistics are estimated on
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]]   # BatchNorm layer -> (running mean, running var)
    nights: int = 1                                   # runs whose data matched it (its creation included)
    info: dict = field(default_factory=dict)          # where it came from (the run that created it, ...)
    fingerprint: tuple[torch.Tensor, torch.Tensor] | None = None   # what a batch's is compared with


def write_bank(path: Path, conditions: list[SavedCondition]) -> int:
    """Write the bank; returns its size in bytes."""
    tensors, meta = {}, []
    for i, c in enumerate(conditions):
        tensors[f"{i}.images"] = c.images.cpu().contiguous()
        tensors[f"{i}.fingerprint_mean"] = c.fingerprint[0].float().cpu().contiguous()
        tensors[f"{i}.fingerprint_var"] = c.fingerprint[1].float().cpu().contiguous()
        for layer, (mean, var) in c.stats.items():
            tensors[f"{i}.mean.{layer}"] = mean.detach().float().cpu().contiguous()
            tensors[f"{i}.var.{layer}"] = var.detach().float().cpu().contiguous()
        meta.append({"name": c.name, "nights": c.nights, "layers": list(c.stats), **c.info})
    write_safetensors(Path(path), tensors, metadata={"conditions": json.dumps(meta)})
    return Path(path).stat().st_size


def read_bank(directory: Path, input_shape: list[int]) -> list[SavedCondition] | None:
    """The checkpoint's bank, or None when it has none; a damaged file, or images of another shape,
    is refused with one line naming it."""
    path = Path(directory) / BANK_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["conditions"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        out = []
        for i, m in enumerate(meta):
            images = tensors[f"{i}.images"]
            if images.dtype != torch.uint8 or list(images.shape[1:]) != list(input_shape):
                raise InputError(f"{path}: condition {m['name']!r} holds {images.dtype} {list(images.shape[1:])} "
                                 f"images, the model takes {list(input_shape)}")
            stats = {layer: (tensors[f"{i}.mean.{layer}"], tensors[f"{i}.var.{layer}"]) for layer in m["layers"]}
            info = {k: v for k, v in m.items() if k not in ("name", "nights", "layers")}
            out.append(SavedCondition(m["name"], images, stats, int(m["nights"]), info,
                                      (tensors[f"{i}.fingerprint_mean"], tensors[f"{i}.fingerprint_var"])))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable or corrupt ({e.__class__.__name__}: {e})") from None
    return out
