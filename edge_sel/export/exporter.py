"""Checkpoint -> artifact directory: the inference model, one training set per scheme, manifest."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from edge_sel.backends.ort_env import require_ort, versions
from edge_sel.backends.ort_manifest import (FORMAT, sha256_file, tensor_shapes, weights_digest,
                                            write_manifest)
from edge_sel.backends.ort_schemes import PLANNED, SCHEME_NOTES, SCHEMES, trainable_names
from edge_sel.core.flops import FlopCounter
from edge_sel.core.outputs import check_out_dir, staged_out_dir
from edge_sel.errors import InputError, parse_json
from edge_sel.models import load_checkpoint

DEFAULT_SCHEMES = SCHEMES   # cheap to make; the device picks the set it trains
BN_MODES = ("eval", "train")
BN_NOTES = {
    "eval": "BatchNorm normalises with the checkpoint's running statistics, which stay frozen; "
            "its scale and shift train where the scheme includes them",
    "train": "BatchNorm normalises with batch statistics and ORT updates the running statistics in "
             "place; the eval model's BatchNorm nodes were trimmed to one output",
}


def resolve_optimizer(optimizer: str, weight_decay: float | None) -> dict:
    from edge_sel.export.artifacts import ADAMW_BETAS, ADAMW_EPS, OPTIMIZERS
    if optimizer not in OPTIMIZERS:
        raise InputError(f"--optimizer: ORT artifacts carry {' or '.join(OPTIMIZERS)}, got {optimizer!r}")
    if optimizer == "sgd":
        if weight_decay:
            raise InputError("--weight-decay: ORT's SGD has no weight decay; use --optimizer adamw for decay")
        return {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                "note": "plain SGD: no momentum, no weight decay"}
    wd = 5e-4 if weight_decay is None else weight_decay
    if wd < 0:
        raise InputError(f"--weight-decay: must be >= 0, got {wd}")
    return {"name": "adamw", "betas": list(ADAMW_BETAS), "eps": ADAMW_EPS, "weight_decay": wd,
            "note": "torch.optim.AdamW semantics (decoupled decay applied before the update)"}


# What torch's ONNX exporter and ORT's gradient builder say about an operator they cannot handle.
UNSUPPORTED = [
    re.compile(r"gradient builder has not been registered: (?P<op>\S+) for node (?P<node>\S+)"),
    re.compile(r"Exporting the operator '?(?P<op>[\w:.]+)'? to ONNX opset version \d+ is not supported"),
    re.compile(r"No Op registered for (?P<op>\S+) with domain"),
]


def unsupported_operator(message: str) -> tuple[str, str | None] | None:
    for pattern in UNSUPPORTED:
        m = pattern.search(message)
        if m:
            return m.group("op"), m.groupdict().get("node")
    return None


class refusing_unsupported:
    """An operator that ONNX export or ORT training cannot handle becomes one line naming it (the
    half-written artifact directory is removed with its staging); other failures pass through."""

    def __init__(self, out: Path, architecture: str, what: str):
        self.out, self.architecture, self.what = out, architecture, what

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        found = unsupported_operator(str(error)) if error is not None else None
        if found is None:
            return False
        op, node = found
        where = f" (node {node})" if node else ""
        which = ("ONNX Runtime training cannot differentiate" if "gradient" in str(error)
                 else "ONNX export does not support")
        raise InputError(f"export {self.out}: model {self.architecture} uses operator {op}{where}, which {which}; "
                         f"{self.what} cannot be made (replace that layer, or train with --backend torch)") from None


def export_bank(model, card, saved, out: Path) -> dict | None:
    """A checkpoint's BatchNorm bank (`saved`, as read_bank read it) for ONNX Runtime: one inference
    graph per condition with its statistics in the BatchNorm nodes, and conditions.json holding the
    chooser (its Gaussians over image features; no image leaves the checkpoint). None when the
    checkpoint keeps no bank."""
    import copy

    from edge_sel.export.onnx_graph import export_inference
    from edge_sel.predict.conditions import ConditionChooser
    from edge_sel.predict.ort_session import EXPORT_FILE
    from edge_sel.predict.statistics import named_batchnorm

    if not saved:
        return None
    chooser = ConditionChooser.from_images([c.name for c in saved], [c.images for c in saved], card.mean, card.std)
    (out / "conditions").mkdir()
    files, worst = [], 0.0
    for i, c in enumerate(saved):
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for name, m in named_batchnorm(twin):
                m.running_mean.copy_(c.stats[name][0])
                m.running_var.copy_(c.stats[name][1])
        files.append(f"conditions/{i}.onnx")
        worst = max(worst, export_inference(twin, card.input_shape, out / files[-1]))
    (out / EXPORT_FILE).write_text(json.dumps({"chooser": chooser.to_dict(), "files": files}, indent=1) + "\n")
    return {"file": EXPORT_FILE, "names": chooser.names, "graphs": files, "max_abs_diff_vs_torch": worst,
            "note": "one inference graph per condition; edge-sel predict --backend ort chooses per image"}


def export_artifacts(checkpoint: Path, out: Path, schemes=DEFAULT_SCHEMES, *, bn_mode: str = "eval",
                     optimizer: str = "sgd", weight_decay: float | None = None, ort_format: bool = False,
                     overwrite: bool = False, option: str = "edge-sel export", own_checkpoint: bool = False) -> dict:
    """Write model.onnx, <scheme>/ artifact sets and manifest.json under `out`; return the manifest.
    `own_checkpoint`: `out` lies inside the checkpoint because the same command wrote both.
    The options, --out and the checkpoint (its bank too) are checked before the `ort` extra, so that
    where the extra cannot install (CPython 3.13) a bad input is still what the user hears first."""
    from edge_sel.core.bn_bank import read_bank

    if bn_mode not in BN_MODES:
        raise InputError(f"--bn-mode: choose one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    opt = resolve_optimizer(optimizer, weight_decay)
    schemes = list(schemes)
    if not schemes:
        raise InputError("--scheme: name at least one scheme")
    for s in schemes:
        if s not in SCHEMES and s != PLANNED:
            raise InputError(f"--scheme: unknown scheme {s!r}; choose from {', '.join(SCHEMES)}")
    out = Path(out)
    # pretrain --export-artifacts writes into the checkpoint it has just made: its own output.
    inputs = [] if own_checkpoint else [("--checkpoint", checkpoint)]
    check_out_dir(out, overwrite, "export", inputs)
    model, card = load_checkpoint(Path(checkpoint))
    model.eval()
    bank = read_bank(Path(checkpoint), list(card.input_shape), model)
    require_ort(option)
    # Built whole beside --out and renamed into place: a torn bank or an operator ONNX cannot take
    # keeps an earlier export as it was.
    with staged_out_dir(out, "export") as staging:
        manifest = _export(model, card, Path(checkpoint), bank, out, staging, schemes, bn_mode, opt, ort_format)
    return manifest


def planned_names(checkpoint: Path, parameters: dict) -> list[str]:
    """The tensors a --memory-budget run's plan chose to train, from the run's own config.json."""
    config = Path(checkpoint) / "config.json"
    try:
        plan = parse_json(config.read_text()).get("memory_plan") or {}
    except (OSError, ValueError, AttributeError):
        plan = {}
    names = plan.get("trainable") if isinstance(plan, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in parameters for n in names):
        raise InputError(f"--scheme {PLANNED}: {config} holds no memory plan that chose what trains "
                         f"(a run of --memory-budget with --sparsity budget)")
    return names


def _export(model, card, checkpoint: Path, saved_bank, out: Path, staging: Path, schemes, bn_mode, opt,
            ort_format) -> dict:
    """The export's files under `staging` (messages name `out`, where they will be)."""
    from edge_sel.export.artifacts import FILES, generate_scheme
    from edge_sel.export.onnx_graph import INFERENCE_TOLERANCE, OPSET, export_inference, export_training_forward
    t0 = time.perf_counter()

    with refusing_unsupported(out, card.architecture, "the inference model"):
        max_diff = export_inference(model, card.input_shape, staging / "model.onnx")
        bank = export_bank(model, card, saved_bank, staging)
        forward_path = staging / ".forward.onnx"
        forward = export_training_forward(model, card.input_shape, forward_path, bn_mode)
    initializers = [t.name for t in forward.graph.initializer]
    numel = {name: p.numel() for name, p in model.named_parameters()}
    planned = planned_names(checkpoint, numel) if PLANNED in schemes else None
    sets = {}
    for scheme in schemes:
        trainable = trainable_names(model, scheme, planned)
        frozen = [n for n in initializers if n not in set(trainable)]
        with refusing_unsupported(out, card.architecture, f"the {scheme!r} training artifacts"):
            stats = generate_scheme(forward, staging / scheme, trainable, frozen, opt["name"], opt["weight_decay"],
                                    bn_mode, ort_format)
        files = sorted(p.name for p in (staging / scheme).iterdir() if p.is_file())
        sets[scheme] = {
            "dir": scheme, "note": SCHEME_NOTES[scheme],
            "trainable": trainable, "trainable_tensors": len(trainable),
            "trainable_entries": sum(numel[n] for n in trainable),
            "frozen_tensors": len(frozen), "parameter_entries": sum(numel.values()),
            "backward": stats,
            "files": {name: sha256_file(staging / scheme / name) for name in files},
            "required_files": list(FILES),
        }
    forward_path.unlink()

    manifest = {
        "format": FORMAT,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "checkpoint": {
            "path": str(checkpoint), "architecture": card.architecture, "num_classes": card.num_classes,
            "weights_sha256": sha256_file(Path(checkpoint) / "model.safetensors"),
            "weights_digest": weights_digest(model), "tensors": tensor_shapes(model),
            "training": card.training,
        },
        "class_names": card.class_names,
        "input": {"name": "input", "shape": ["batch", *card.input_shape], "dtype": "float32",
                  "normalization": {"mean": card.mean, "std": card.std, **card.normalization_origin},
                  "preprocess": "x = (pixels / 255 - mean[c]) / std[c], NCHW float32"},
        "inference_model": {"file": "model.onnx", "opset": OPSET, "outputs": ["logits"],
                            "max_abs_diff_vs_torch": max_diff, "tolerance": INFERENCE_TOLERANCE,
                            "checked_batch_sizes": [8, 3], "sha256": sha256_file(staging / "model.onnx"),
                            # what predict reports per image: counted here, from the torch model
                            # exported, so the device never looks for a checkpoint
                            "flops_forward_per_image": FlopCounter(model, list(card.input_shape)).eval_batch(1),
                            "flops_note": "counted FLOPs of one image's forward pass (torch's FLOP counter "
                                          "on the exported model, at export)"},
        **({"conditions": bank} if bank else {}),
        "training": {
            "inputs": {"input": "float32 [batch, C, H, W]", "labels": "int64 [batch]",
                       "sample_weight": "float32 [batch]"},
            "outputs": ["loss", "logits"],
            "loss": "mean over the batch of sample_weight * cross_entropy(logits, labels); "
                    "ones for sample_weight give the plain mean",
            "optimizer": opt, "bn_mode": bn_mode, "bn_note": BN_NOTES[bn_mode],
            "ort_format": ort_format,
        },
        "schemes": sets,
        "export_wall_s": round(time.perf_counter() - t0, 3),
    }
    write_manifest(staging, manifest)
    return manifest
