"""What a device keeps of where it came from: files of a checkpoint directory written by pretrain
and carried, unchanged, into every fine-tune's run directory and every deployed version.

    anchors.safetensors   a small labelled set of the server's training images (uint8, as stored),
                          each marked for replay (mixed into training batches) or for the guard
                          (held out of training: what "forgetting" is measured on)
    fisher.safetensors    the diagonal Fisher information of every trainable parameter at the
                          source weights (the weight of the penalty toward them)
    source.safetensors    the source (warmup) model's full state: what the penalty pulls toward and
                          what a reset restores

The model card's `source_memory` section states each file's size and how it was made. A checkpoint
from before these files (or pretrained with --anchors-per-class 0) has none: the levers that need
them are refused with one line, the guard does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from edge_sel.core.checkpoint import copy_atomically, fsync_dir, load_inside, write_safetensors
from edge_sel.errors import InputError, inside_file, writing

ANCHORS_FILE, FISHER_FILE, SOURCE_FILE = "anchors.safetensors", "fisher.safetensors", "source.safetensors"
SOURCE_FILES = (ANCHORS_FILE, FISHER_FILE, SOURCE_FILE)
REPLAY, GUARD = 0, 1       # an anchor's role


@dataclass
class Anchors:
    images: torch.Tensor      # uint8 N x C x H x W
    labels: torch.Tensor      # int64 N
    index: torch.Tensor       # int64 N: the samples' ids in the server's dataset
    role: torch.Tensor        # int64 N: REPLAY or GUARD

    def part(self, role: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keep = self.role == role
        return self.images[keep], self.labels[keep], self.index[keep]


@dataclass
class SourceMemory:
    anchors: Anchors                  # engine/levers/anchors.py makes datasets of them (replay, guard)
    fisher: dict[str, torch.Tensor]   # parameter name -> diagonal Fisher information (fp32)
    source: dict[str, torch.Tensor]   # the source model's state dict (parameters and buffers)
    info: dict = field(default_factory=dict)   # the card's source_memory section


def draw_anchors(labels: torch.Tensor, num_classes: int, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of up to `per_class` training samples of each class and their roles: within each
    class, alternately replay and guard in a seeded random order (a class with one sample: replay)."""
    draw = torch.Generator().manual_seed(seed + 104729)
    positions, roles = [], []
    labels = labels.cpu()
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=draw)][:per_class]
        positions.append(members)
        roles.append(torch.arange(len(members)) % 2)
    return torch.cat(positions), torch.cat(roles)


def write_source_memory(directory: Path, anchors: Anchors, fisher: dict[str, torch.Tensor], source_state: dict[str, torch.Tensor],
                        info: dict) -> dict:
    """Write the three files; returns the card's source_memory section (`info` plus sizes)."""
    directory = Path(directory)
    write_safetensors(directory / ANCHORS_FILE, {
        "images": anchors.images.cpu().contiguous(), "labels": anchors.labels.cpu().contiguous(),
        "index": anchors.index.cpu().contiguous(), "role": anchors.role.to(torch.uint8).cpu().contiguous()})
    write_safetensors(directory / FISHER_FILE, {k: v.detach().float().cpu().contiguous() for k, v in fisher.items()})
    write_safetensors(directory / SOURCE_FILE, {k: v.detach().cpu().contiguous() for k, v in source_state.items()})
    with writing(directory):
        fsync_dir(directory)
    sizes = {name: (directory / name).stat().st_size for name in SOURCE_FILES}
    n, n_guard = len(anchors.labels), int((anchors.role == GUARD).sum())
    return {**info, "anchors": {**info.get("anchors", {}), "file": ANCHORS_FILE, "samples": n,
                                "replay": n - n_guard, "guard": n_guard, "bytes": sizes[ANCHORS_FILE]},
            "fisher": {**info.get("fisher", {}), "file": FISHER_FILE, "parameters": sum(v.numel() for v in fisher.values()),
                       "bytes": sizes[FISHER_FILE]},
            "source": {**info.get("source", {}), "file": SOURCE_FILE, "bytes": sizes[SOURCE_FILE]}}


def has_source_memory(directory: Path) -> bool:
    """All three files are there (regular files: one that is a link is refused, errors.inside_file)."""
    return all([inside_file(directory, name, "--checkpoint") for name in SOURCE_FILES])


def read_source_memory(directory: Path, input_shape: list[int], info: dict | None = None,
                       any_size: bool = False) -> SourceMemory | None:
    """The checkpoint's source memory, or None when the directory has none. A damaged file, or
    anchors of another image shape, is refused with one line naming it; so is a missing one where
    the others are there: read as "no memory", the guard and the levers would be silently off.
    `any_size`: the model runs at other sizes, so only the anchors' channels must match (the caller
    resizes them)."""
    directory = Path(directory)
    if not has_source_memory(directory):
        missing = [name for name in SOURCE_FILES if not (directory / name).is_file()]
        if len(missing) < len(SOURCE_FILES):
            raise InputError(f"{directory / missing[0]}: missing, though the checkpoint ships its source memory "
                             f"(anchor set, Fisher, source weights: the guard and the levers need it); restore "
                             f"{', '.join(missing)} from where the checkpoint came from")
        return None
    tensors = {}
    for name in SOURCE_FILES:
        try:
            tensors[name] = load_inside(directory, name, "--checkpoint")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{directory / name}: unreadable or corrupt ({e})") from None
    a = tensors[ANCHORS_FILE]
    try:
        images, labels, index, role = a["images"], a["labels"].long(), a["index"].long(), a["role"].long()
    except KeyError as e:
        raise InputError(f"{directory / ANCHORS_FILE}: missing tensor {e}") from None
    taken = list(images.shape[1:2]) if any_size else list(images.shape[1:])
    if images.dtype != torch.uint8 or taken != list(input_shape)[:len(taken)]:
        raise InputError(f"{directory / ANCHORS_FILE}: anchor images are {images.dtype} {list(images.shape[1:])}, "
                         f"the model takes {list(input_shape)}")
    return SourceMemory(Anchors(images, labels, index, role), tensors[FISHER_FILE], tensors[SOURCE_FILE],
                        dict(info or {}))


def copy_source_memory(source_dir: Path, target_dir: Path) -> bool:
    """Carry the files into a run directory (so its output model, once deployed, keeps them)."""
    if not has_source_memory(source_dir):
        return False
    for name in SOURCE_FILES:
        copy_atomically(Path(source_dir) / name, Path(target_dir) / name)
    with writing(Path(target_dir)):
        fsync_dir(Path(target_dir))
    return True
