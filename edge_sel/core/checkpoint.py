"""Model checkpoints: `model.safetensors` (weights and BN buffers) + `model.json` (what they are)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from edge_sel.core.set_gains_card import set_gains_problem
from edge_sel.core.temp_file import replacing
from edge_sel.version import __version__
from edge_sel.errors import (InputError, existing_dir, open_inside, parse_json, read_inside, read_json_inside,
                             required_file, writing)

FORMAT = "edge-sel-checkpoint/1"


@dataclass
class ModelCard:
    architecture: str
    num_classes: int
    class_names: list[str]
    input_shape: list[int]
    mean: list[float]
    std: list[float]
    dataset: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    # How to rebuild the model (models.spec.ModelSpec.to_json); None: `architecture` is a registered name.
    model: dict | None = None
    # What the server shipped for the device's life (core/source_memory.py): files and sizes; None: none.
    source_memory: dict | None = None
    # Where mean and std came from (engine/runs/input_norm.py): {"source": "dataset" | "weights" |
    # "option", ...}; a card written before it was recorded used the training split's statistics.
    normalization_origin: dict = field(default_factory=lambda: {"source": "dataset"})
    # What each set gained from these weights on the server's images (engine/loop/set_gains.py); None: not measured.
    set_gains: dict | None = None

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "architecture": self.architecture,
            **({"model": self.model} if self.model else {}), "num_classes": self.num_classes,
            "class_names": self.class_names, "input_shape": self.input_shape,
            "normalization": {"mean": self.mean, "std": self.std, **self.normalization_origin},
            "dataset": self.dataset, "training": self.training,
            **({"source_memory": self.source_memory} if self.source_memory else {}),
            **({"set_gains": self.set_gains} if self.set_gains else {}), "edge_sel_version": __version__,
        }

    @classmethod
    def from_json(cls, d: dict, where: Path) -> "ModelCard":
        try:
            card = cls(d["architecture"], int(d["num_classes"]), list(d["class_names"]),
                       [int(v) for v in d["input_shape"]], [float(v) for v in d["normalization"]["mean"]],
                       [float(v) for v in d["normalization"]["std"]], d.get("dataset", {}), d.get("training", {}),
                       d.get("model"), d.get("source_memory"),
                       {k: v for k, v in d["normalization"].items() if k not in ("mean", "std")} or {"source": "dataset"},
                       d.get("set_gains"))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise InputError(f"{where}: not an edge-sel model card (missing or bad field {e})") from None
        problem = card.problem()
        if problem:
            raise InputError(f"{where}: not an edge-sel model card ({problem})")
        return card

    def problem(self) -> str | None:
        """What makes a card read from a file unusable, or None (a device reads cards it did not write)."""
        channels = self.input_shape[0] if self.input_shape else 0
        if not isinstance(self.architecture, str) or not self.architecture:
            return "architecture must be a name"
        if not 1 <= self.num_classes <= 1_000_000 or len(self.class_names) != self.num_classes \
                or not all(isinstance(c, str) for c in self.class_names):
            return "num_classes must be >= 1 and class_names one name per class"
        if len(self.input_shape) != 3 or not all(1 <= v <= 65536 for v in self.input_shape):
            return "input_shape must be three positive sizes (channels, height, width)"
        if len(self.mean) != channels or len(self.std) != channels or not all(
                math.isfinite(v) for v in self.mean + self.std) or not all(v > 0 for v in self.std):
            return "normalization needs a finite mean and a positive std per channel"
        if not isinstance(self.dataset, dict) or not isinstance(self.training, dict):
            return "dataset and training must be mappings"
        if self.model is not None and not isinstance(self.model, (dict, str)):
            return "model must be a spec"
        if not isinstance(self.normalization_origin, dict):
            return "normalization must be a mapping"
        if self.source_memory is not None and not isinstance(self.source_memory, dict):
            return "source_memory must be a mapping"
        return None if self.set_gains is None else set_gains_problem(self.set_gains)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` whole under `path`, or `path` as it was: written to a temporary name, then renamed (a
    full disk leaves no truncated file under the name a later command reads). Raises OSError."""
    with replacing(Path(path)) as f:
        f.write(data)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomically, with the permissions the umask gives every other file (safetensors' own
    save_file creates its file 0600, which a service account could not read). A failed write is a
    WriteError naming the file (one line), never a truncated file."""
    with writing(path):
        atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def copy_atomically(source: Path, target: Path, label: str = "--checkpoint") -> None:
    """A copy of the regular file `source` whole under `target`, or a WriteError naming `target`.
    `source` is opened as a received file (errors.open_inside: a link is refused naming `label`)."""
    source = Path(source)
    fd = open_inside(source.parent, source.name, label)
    if fd is None:
        raise InputError(f"{label} {source.parent}: {source.name} is missing")
    with os.fdopen(fd, "rb") as src, writing(target), replacing(Path(target)) as f:
        shutil.copyfileobj(src, f, 1 << 20)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, model: torch.nn.Module, card: ModelCard) -> None:
    """Weights first, fsynced, then model.json: a checkpoint whose card exists has its weights."""
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with writing(directory / "model.safetensors"):
        directory.mkdir(parents=True, exist_ok=True)
        write_safetensors(directory / "model.safetensors", tensors, {"format": FORMAT})
        fsync_dir(directory)
    with writing(directory / "model.json"):
        atomic_write_bytes(directory / "model.json", json.dumps(card.to_json(), indent=2).encode())
        fsync_dir(directory)


def refuse_unfinished_pretrain(directory: Path) -> None:
    """A pretrain's run directory that a stop signal ended before its last epoch holds no
    checkpoint (older versions wrote one): said in one line with the way to finish it, rather than
    'model.json is missing' or, worse, a fine-tune from half-trained weights."""
    try:
        config = parse_json(read_inside(directory, "config.json", "--checkpoint") or b"null")
        summary = parse_json(read_inside(directory, "summary.json", "--checkpoint") or b"{}")
    except (OSError, ValueError):
        return
    if not isinstance(config, dict) or config.get("phase") != "pretrain" or not isinstance(summary, dict):
        return
    stopped = summary.get("stop_reason") == "interrupted"
    if stopped or not (directory / "model.json").is_file():
        done = summary.get("epochs_run")
        said = f"stopped after {done} of {config.get('epochs')} epochs" if stopped and done is not None else \
            "did not finish"
        raise InputError(f"--checkpoint {directory}: a pretrain that {said}, not a checkpoint; finish it with: "
                         f"edge-sel pretrain --resume {directory}")


def read_card(directory: Path) -> ModelCard:
    directory = existing_dir(directory, "--checkpoint")
    refuse_unfinished_pretrain(directory)
    meta = required_file(directory, "model.json", "--checkpoint", "checkpoint")
    try:
        d = read_json_inside(directory, "model.json", "--checkpoint")
    except OSError as e:
        raise InputError(f"{meta}: unreadable ({e.__class__.__name__}: {e})") from None
    if not isinstance(d, dict):
        raise InputError(f"{meta}: not an edge-sel model card")
    return ModelCard.from_json(d, meta)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name (building the model they fit is models.load_checkpoint's job)."""
    weights = required_file(directory, "model.safetensors", "--checkpoint")
    try:
        tensors = load_inside(directory, "model.safetensors", "--checkpoint")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{weights}: unreadable or corrupt ({e})") from None
    refuse_non_finite(tensors, weights)
    return tensors


def load_inside(directory: Path, name: str, label: str) -> dict[str, torch.Tensor]:
    """The tensors of a received safetensors file, read once through errors.read_inside (no link
    followed); OSError (missing too), SafetensorError or ValueError when it cannot be read."""
    data = read_inside(directory, name, label)
    if data is None:
        raise FileNotFoundError(f"{name} is missing")
    return load(data)


def refuse_non_finite(tensors: dict[str, torch.Tensor], where: Path) -> None:
    """A weight or BatchNorm statistic that is NaN or infinite makes every loss non-finite: a run
    from it could only roll back until it gives up, so it is refused before anything is written."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            kinds = "/".join(k for k, hit in (("NaN", t.isnan().any()), ("Inf", t.isinf().any())) if hit)
            raise InputError(f"{where}: tensor {name!r} holds {bad} {kinds} value(s) of {t.numel()}; "
                             f"a checkpoint with non-finite weights cannot be trained or deployed")


def pinned(directory: Path) -> Path:
    """The directory a checkpoint path names now: a link (the deployed model, which promote flips to
    a new version) read once, so that the card, weights, digest, source memory and bank a run starts
    from are all one version's. A path that is no link is returned as given."""
    directory = Path(directory)
    return Path(os.path.realpath(directory)) if directory.is_symlink() else directory


def weights_digest(directory: Path) -> str:
    """SHA-256 of a checkpoint's model.safetensors: which weights a run started from, by content."""
    h = hashlib.sha256()
    fd = open_inside(directory, "model.safetensors", "--checkpoint")
    if fd is None:
        raise FileNotFoundError(f"{Path(directory) / 'model.safetensors'}: missing")
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
