"""ONNX inference model and ONNX Runtime training artifacts made from an edge-sel checkpoint.

`export_artifacts` writes, under one directory: `model.onnx` (inference, checked against torch),
one ORT training artifact set per update scheme (`<scheme>/`), and `manifest.json` describing
both. Everything that imports onnx or onnxruntime is imported lazily, so the core package runs
without the `ort` extra.
"""

from edge_sel.backends.ort_schemes import SCHEMES

__all__ = ["SCHEMES"]
