"""manifest.json of an ORT artifact directory: what it holds and where it came from (written by
`edge-sel export`), plus the checks `finetune --backend ort` runs before trusting it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from edge_sel.backends.onnx_files import self_contained_graph
from edge_sel.errors import InputError, existing_dir, named_inside, read_json
from edge_sel.models.blocks import head

FORMAT = "edge-sel-ort-artifacts/1"
MANIFEST = "manifest.json"
TRAINING_GRAPHS = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx")
EXPORT_CHECKPOINT = "checkpoint"      # the ORT checkpoint state an export starts from


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict's names, shapes and values: the same weights give the same digest
    whatever file they were read from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{list(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def tensor_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def write_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(root: Path, option: str = "--artifacts") -> dict:
    path = named_inside(root, MANIFEST, f"{option} {root}")
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as e:      # ValueError: not JSON, or not UTF-8
        raise InputError(f"{option} {root}: {MANIFEST} is unreadable ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{option} {root}: {MANIFEST} is not an edge-sel artifact manifest ({FORMAT})")
    if not isinstance(manifest.get("schemes", {}), dict):
        raise InputError(f"{option} {root}: {MANIFEST}'s schemes are not a mapping")
    return manifest


def resolve(path: Path, option: str = "--artifacts") -> tuple[Path, str, dict, str | None]:
    """ART (an export root) or ART/<scheme> -> (scheme directory, scheme, manifest, note).
    A root with several schemes means its `full` set, said in the note."""
    path = existing_dir(path, option)
    note = None
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path, option)
        schemes = list(manifest.get("schemes", {}))
        if not schemes:
            raise InputError(f"{option} {path}: the manifest lists no artifact sets")
        scheme = schemes[0] if len(schemes) == 1 else "full" if "full" in schemes else None
        if scheme is None:
            raise InputError(f"{option} {path}: holds schemes {', '.join(schemes)}; point at one, e.g. "
                             f"{option} {path / schemes[0]}")
        if len(schemes) > 1:
            note = (f"{option} {path}: holds {', '.join(schemes)}; training the `full` set "
                    f"(pass {option} {path / 'last-block'} etc. for another)")
        root = path
    elif (path.parent / MANIFEST).is_file():
        root, scheme = path.parent, path.name
        manifest = read_manifest(root, option)
        if scheme not in manifest.get("schemes", {}):
            raise InputError(f"{option} {path}: {root / MANIFEST} lists no scheme {scheme!r}")
    else:
        raise InputError(f"{option} {path}: no {MANIFEST} here or in the parent; make artifacts with "
                         f"`edge-sel export --checkpoint DIR --out ART`")
    entry = manifest["schemes"][scheme]
    where = f"{option} {root / MANIFEST}"
    files = entry.get("files", {}) if isinstance(entry, dict) else None
    if not isinstance(files, dict):
        raise InputError(f"{where}: scheme {scheme!r} is not a mapping with a mapping of files")
    directory = named_inside(root, entry.get("dir"), where)
    for name, digest in files.items():
        f = named_inside(directory, name, where)
        if not f.is_file():
            raise InputError(f"{option} {path}: {f} is missing")
        if sha256_file(f) != digest:
            raise InputError(f"{option} {path}: {f} differs from the file the manifest describes (sha256)")
    # What ONNX Runtime training opens, listed in the manifest or not: inside the export, and each
    # graph holding its own data (backends/onnx_files.py).
    for name in (*TRAINING_GRAPHS, EXPORT_CHECKPOINT):
        f = named_inside(directory, name, where)
        if name in TRAINING_GRAPHS and f.is_file():
            self_contained_graph(f)
    return directory, scheme, manifest, note


def check_against_model(manifest: dict, model: torch.nn.Module, where: Path,
                        option: str = "--artifacts") -> bool:
    """Same classes and tensor shapes, or an InputError; returns True when the weights are the very
    ones exported (False: same architecture, other weights, e.g. an earlier fine-tune)."""
    exported = manifest["checkpoint"]
    shapes = tensor_shapes(model)
    ours_classes = getattr(head(model), "out_features", None)
    if ours_classes is not None and ours_classes != exported["num_classes"]:
        raise InputError(f"{option} {where}: exported for {exported['num_classes']} classes, the checkpoint "
                         f"has {ours_classes}")
    theirs = exported["tensors"]
    mismatched = [k for k in theirs if k in shapes and shapes[k] != theirs[k]]
    missing = [k for k in theirs if k not in shapes]
    if missing or mismatched:
        bad = (missing or mismatched)[0]
        raise InputError(f"{option} {where}: exported from a different architecture ({exported['architecture']}); "
                         f"tensor {bad} {theirs[bad]} vs {shapes.get(bad)}")
    return weights_digest(model) == exported["weights_digest"]


def optimizer_defaults(artifacts: Path, option: str = "--artifacts") -> dict:
    """The optimizer the artifacts were exported with, as TrainConfig fields (ORT's SGD: no momentum)."""
    _, _, manifest, _ = resolve(Path(artifacts), option)
    opt = manifest["training"]["optimizer"]
    return {"optimizer": opt["name"], "momentum": float(opt.get("momentum", 0.0)),
            "weight_decay": float(opt.get("weight_decay", 0.0))}
