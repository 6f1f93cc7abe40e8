"""ONNX Runtime sessions for an export directory: the plain inference model, or, when the export
carries a bank (`conditions.json`), one graph per condition with that condition's BatchNorm
statistics folded in, and the chooser that picks between them (its Gaussians over image features;
the bank's images themselves never leave the device's checkpoint)."""

from __future__ import annotations

from pathlib import Path

from edge_sel.backends.onnx_files import self_contained_graph
from edge_sel.errors import InputError, named_inside, read_json

EXPORT_FILE = "conditions.json"


def session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("--backend ort: onnxruntime is not installed (pip install 'edge-sel[ort]')") from None
    from edge_sel.threads import ort_waits_like_openmp
    options = ort_waits_like_openmp(ort.SessionOptions())
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not path.is_file():
        raise InputError(f"{path}: missing from the export")
    graph = self_contained_graph(path)       # checked before ONNX Runtime reads any file it names
    try:
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception as e:      # onnxruntime raises its own exception types for a damaged graph
        raise InputError(f"{path}: ONNX Runtime cannot load it ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None


def load_sessions(directory: Path, use_bank: bool, threads: int | None):
    """(condition names, one session per condition, the chooser's dict) — or the plain model's
    single session and no chooser when the export has no bank or `use_bank` is off."""
    bank = named_inside(directory, EXPORT_FILE, str(directory))
    if use_bank and bank.is_file():
        try:
            d = read_json(bank)
            names, files, chooser = list(d["chooser"]["names"]), list(d["files"]), d["chooser"]
            if len(files) != len(names) or not names or not all(isinstance(f, str) for f in files):
                raise ValueError("one graph file name per condition expected")
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{bank}: unreadable or corrupt ({e.__class__.__name__}: {e})") from None
        return names, [session(named_inside(directory, f, str(bank)), threads) for f in files], chooser
    return ["own"], [session(named_inside(directory, "model.onnx", str(directory)), threads)], None
