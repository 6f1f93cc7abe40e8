"""Without a usable `ort` extra, export and the ort backend stop with one line that says what to
install. Runs whether or not onnxruntime-training is installed: the missing or shadowing
packages are simulated in sys.modules."""

import sys
import types

import pytest

from helpers import run_cli
from edge_sel.backends.ort_env import require_ort
from edge_sel.errors import InputError


def plain_onnxruntime(monkeypatch):
    """onnx 1.17 and an inference-only onnxruntime: what `pip install onnxruntime` leaves."""
    onnx = types.ModuleType("onnx")
    onnx.IR_VERSION, onnx.__version__ = 10, "1.17.0"
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.20.1"
    monkeypatch.setitem(sys.modules, "onnx", onnx)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setitem(sys.modules, "onnxruntime.training", None)
    monkeypatch.setitem(sys.modules, "onnxruntime.training.api", None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "ckpt"
    run_cli("pretrain", "--dataset", "digits", "--subset", 200, "--epochs", 1, "--out", out, "--quiet")
    return out


def test_missing_extra_names_the_install(monkeypatch, warm, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    r = run_cli("export", "--checkpoint", warm, "--out", tmp_path / "art", expect=2)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-sel: error: export:")
    assert "pip install 'edge-sel[ort]'" in lines[0]
    assert not (tmp_path / "art").exists()
    # pretrain checks before it trains anything.
    r = run_cli("pretrain", "--dataset", "digits", "--epochs", 1, "--out", tmp_path / "p", "--export-artifacts",
                expect=2)
    assert "--export-artifacts" in r.output and "edge-sel[ort]" in r.output
    assert not (tmp_path / "p").exists()


def test_plain_onnxruntime_shadowing_the_training_build(monkeypatch, warm, tmp_path):
    plain_onnxruntime(monkeypatch)
    with pytest.raises(InputError, match="plain onnxruntime shadows"):
        require_ort("--backend ort")
    r = run_cli("finetune", "--checkpoint", warm, "--dataset", "digits", "--subset", 200, "--epochs", 1,
                "--out", tmp_path / "run", "--backend", "ort", "--artifacts", tmp_path, "--quiet", expect=2)
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("edge-sel: error: --backend ort:") and "pip uninstall" in line


def test_newer_onnx_is_refused(monkeypatch):
    plain_onnxruntime(monkeypatch)
    sys.modules["onnx"].IR_VERSION, sys.modules["onnx"].__version__ = 11, "1.19.0"
    monkeypatch.setitem(sys.modules, "onnxruntime.training", types.ModuleType("onnxruntime.training"))
    monkeypatch.setitem(sys.modules, "onnxruntime.training.api", types.ModuleType("onnxruntime.training.api"))
    monkeypatch.setitem(sys.modules, "onnxruntime.training.artifacts",
                        types.ModuleType("onnxruntime.training.artifacts"))
    with pytest.raises(InputError, match="onnx==1.17.0"):
        require_ort("export")
