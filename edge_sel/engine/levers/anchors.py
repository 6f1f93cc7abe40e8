"""A checkpoint's source memory (core/source_memory.py) as a fine-tune uses it: the anchors as
datasets shaped like the run's data, the Fisher information and source weights, and the files
carried into the run directory so the output model keeps them when it is deployed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edge_sel.core.checkpoint import ModelCard
from edge_sel.core.source_memory import GUARD, REPLAY, SourceMemory, copy_source_memory, read_source_memory
from edge_sel.data.dataset import IndexedDataset
from edge_sel.data.resize import resize_pixels
from edge_sel.errors import InputError


@dataclass
class Memory:
    replay: IndexedDataset             # source images a fine-tune may mix into its batches
    guard: IndexedDataset              # source images never trained on: forgetting is measured here
    fisher: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor]
    info: dict                         # the card's source_memory section (sizes, source accuracies)
    directory: Path

    @property
    def source_guard_acc(self) -> float | None:
        """The source model's accuracy on the guard anchors, measured when pretrain wrote them."""
        return (self.info.get("anchors") or {}).get("guard_acc")


def load_memory(checkpoint: Path, card: ModelCard, reference: IndexedDataset) -> Memory | None:
    """The checkpoint's source memory, or None when it has none."""
    # A pooled model fine-tuned at another size (models/input_size.py) sees its anchors at that size too.
    any_size = bool((card.training or {}).get("input_sizes", {}).get("any_size"))
    memory: SourceMemory | None = read_source_memory(Path(checkpoint), reference.input_shape, card.source_memory,
                                                     any_size)
    if memory is None:
        return None
    memory.anchors.images = resize_pixels(memory.anchors.images, tuple(reference.input_shape[-2:]))

    def dataset(role: int, name: str) -> IndexedDataset:
        images, labels, index = memory.anchors.part(role)
        return IndexedDataset(images, labels, index, list(reference.class_names), name=f"anchors ({name})",
                              augment=dict(reference.augment))
    return Memory(dataset(REPLAY, "replay"), dataset(GUARD, "guard"), memory.fisher, memory.source, memory.info,
                  Path(checkpoint))


def require_memory(memory: Memory | None, option: str, checkpoint: Path | None = None) -> Memory:
    """A lever that needs the source memory, asked of a checkpoint without it: one line (naming the
    checkpoint where the caller knows it)."""
    if memory is None:
        where = "the starting checkpoint" if checkpoint is None else f"the checkpoint {checkpoint}"
        raise InputError(f"{option}: {where} has no anchor set, Fisher information or source "
                         f"weights (pretrain writes them unless --anchors-per-class 0; checkpoints from before "
                         f"they existed have none)")
    return memory


def carry_memory(checkpoint: Path, run_dir: Path) -> bool:
    """Copy the source memory into the run directory (promote deploys it with the model)."""
    return copy_source_memory(Path(checkpoint), Path(run_dir))
