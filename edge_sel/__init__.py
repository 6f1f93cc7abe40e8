"""edge-sel: on-device fine-tuning whose savings are counted and measured.

`edge_sel.pretrain`, `edge_sel.finetune`, `edge_sel.resume`, `edge_sel.load_model` (edge_sel.api) and
`edge_sel.Predictor` (edge_sel.predict) are loaded on first use, so `import edge_sel` stays as cheap
as reading the version.
"""

from edge_sel.version import __version__

__all__ = ["pretrain", "finetune", "resume", "load_model", "Predictor", "RunResult", "__version__"]


def __getattr__(name: str):
    if name in ("pretrain", "finetune", "resume", "load_model", "RunResult"):
        import importlib
        return getattr(importlib.import_module("edge_sel.api"), name)
    if name == "Predictor":
        import importlib
        return importlib.import_module("edge_sel.predict.predictor").Predictor
    raise AttributeError(f"module 'edge_sel' has no attribute {name!r}")
