"""Backends run forward, backward and the optimizer step: torch (default) or ORT artifacts."""

from __future__ import annotations

from edge_sel.backends.torch_backend import TorchBackend
from edge_sel.errors import InputError

BACKENDS = ("torch", "ort")


def make_backend(cfg, model, optimizer, updater, device):
    if cfg.backend == "torch":
        return TorchBackend(model, optimizer, updater, device, cfg.amp, cfg.label_smoothing)
    if cfg.backend == "ort":
        raise InputError("--backend ort: not available in this build yet")
    raise InputError(f"--backend: unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
