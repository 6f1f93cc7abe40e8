"""The optional `ort` extra: import onnx and onnxruntime-training, or say in one line what to fix.

onnxruntime-training-cpu 1.19.2 is the last training release. It installs the same top-level
`onnxruntime` package as plain `onnxruntime`, so a plain install beside it shadows the training
API; and onnx newer than 1.17 writes IR versions that 1.19.2 refuses to load.
"""

from __future__ import annotations

from edge_sel.errors import InputError

INSTALL_HINT = "pip install 'edge-sel[ort]'"
MAX_IR_VERSION = 10   # the newest ONNX IR version onnxruntime 1.19.2 loads


def require_ort(option: str) -> None:
    """Raise InputError naming `option` unless onnx and onnxruntime.training.api are usable."""
    try:
        import onnx
    except ImportError:
        raise InputError(f"{option}: needs onnx and onnxruntime-training; {INSTALL_HINT}") from None
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"{option}: needs onnxruntime-training; {INSTALL_HINT}") from None
    try:
        import onnxruntime.training.api  # noqa: F401
        import onnxruntime.training.artifacts  # noqa: F401
    except ImportError:
        version = getattr(onnxruntime, "__version__", "?")
        raise InputError(
            f"{option}: onnxruntime {version} has no training API (plain onnxruntime shadows "
            f"onnxruntime-training-cpu); pip uninstall -y onnxruntime onnxruntime-training-cpu && "
            f"{INSTALL_HINT}") from None
    if onnx.IR_VERSION > MAX_IR_VERSION:
        raise InputError(f"{option}: onnx {onnx.__version__} writes IR version {onnx.IR_VERSION}, which "
                         f"onnxruntime-training {onnxruntime.__version__} cannot load; {INSTALL_HINT} "
                         f"(pins onnx==1.17.0)")
    onnxruntime.set_default_logger_severity(3)   # warnings and errors only


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    from edge_sel.version import __version__
    return {"edge_sel": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
