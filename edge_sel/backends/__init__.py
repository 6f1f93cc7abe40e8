"""Backends run forward, backward and the optimizer step: torch (default) or ORT artifacts."""

from __future__ import annotations

from edge_sel.backends.torch_backend import TorchBackend
from edge_sel.errors import InputError

BACKENDS = ("torch", "ort")


def make_backend(cfg, model, optimizer, updater, device, objective=None):
    """`cfg.precision` and `cfg.eval_precision` are the run's choices by now (fp32, bf16 or fp16);
    `objective` what the torch backend's step minimises (methods/objective.py; ORT's is in its artifacts)."""
    if cfg.backend == "torch":
        return TorchBackend(model, optimizer, updater, device, label_smoothing=cfg.label_smoothing,
                            bn_mode=cfg.bn_mode, compile=cfg.compile, precision=(cfg.precision, cfg.eval_precision),
                            objective=objective)
    if cfg.backend == "ort":
        from edge_sel.backends.ort_backend import OrtBackend   # the `ort` extra is optional
        return OrtBackend.from_config(cfg, model, optimizer, updater, device)
    raise InputError(f"--backend: unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
