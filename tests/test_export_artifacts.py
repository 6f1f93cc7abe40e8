"""`edge-sel export` and `pretrain --export-artifacts`: the inference model, one ORT training
artifact set per scheme, and a manifest whose numbers the tests check against the files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.training.api")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from helpers import run_cli  # noqa: E402
from edge_sel.backends.ort_manifest import sha256_file  # noqa: E402
from edge_sel.data import load_source  # noqa: E402
from edge_sel.models import load_checkpoint  # noqa: E402
from edge_sel.models import count_parameters  # noqa: E402

STANDALONE = Path(__file__).with_name("ort_standalone_train.py")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A digits checkpoint, with the default artifacts exported by the pretrain command itself."""
    out = tmp_path_factory.mktemp("warm") / "ckpt"
    run_cli("pretrain", "--dataset", "digits", "--epochs", 1, "--batch-size", 64, "--out", out, "--quiet",
            "--export-artifacts")
    return out


@pytest.fixture(scope="module")
def manifest(warm):
    return json.loads((warm / "artifacts" / "manifest.json").read_text())


def normalised_digits(manifest, n=None):
    _, test = load_source("digits")
    mean = torch.tensor(manifest["input"]["normalization"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(manifest["input"]["normalization"]["std"]).view(1, -1, 1, 1)
    x = ((test.images.float() / 255 - mean) / std)[:n]
    return x, test.labels[:n]


def test_pretrain_exports_every_default_scheme(warm, manifest):
    art = warm / "artifacts"
    assert list(manifest["schemes"]) == ["full", "last-block", "classifier", "bias"]
    for name, s in manifest["schemes"].items():
        for f in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint"):
            assert s["files"][f] == sha256_file(art / name / f)
        for f in ("training_model.onnx", "eval_model.onnx"):      # the names a client reads from the manifest
            outputs = [o.name for o in onnx.load(str(art / name / f)).graph.output]
            # The training graph adds gradient-accumulation outputs after the user's two.
            assert outputs[:2] == manifest["training"]["outputs"] == ["loss", "logits"]
    assert manifest["inference_model"]["sha256"] == sha256_file(art / "model.onnx")
    assert manifest["checkpoint"]["weights_sha256"] == sha256_file(warm / "model.safetensors")
    assert set(manifest["versions"]) == {"edge_sel", "torch", "onnx", "onnxruntime"}
    assert manifest["versions"]["onnxruntime"] == ort.__version__
    assert manifest["input"]["shape"] == ["batch", 1, 8, 8]
    assert manifest["class_names"] == [str(d) for d in range(10)]
    assert manifest["training"]["bn_mode"] == "eval" and manifest["training"]["optimizer"]["name"] == "sgd"


def test_trainable_sets_follow_the_scheme(warm, manifest):
    model, _ = load_checkpoint(warm)
    s = manifest["schemes"]
    assert s["full"]["trainable_tensors"] == len(list(model.parameters()))
    assert s["full"]["trainable_entries"] == count_parameters(model)
    assert s["classifier"]["trainable"] == ["fc.weight", "fc.bias"]
    assert s["classifier"]["trainable_entries"] == 256 * 10 + 10
    assert s["last-block"]["trainable"] == ["features.3.0.weight", "features.3.1.weight", "features.3.1.bias",
                                            "fc.weight", "fc.bias"]
    assert all(n.endswith(".bias") for n in s["bias"]["trainable"]) and len(s["bias"]["trainable"]) == 5
    # The checkpoint the device loads marks exactly those tensors trainable.
    from onnxruntime.training import api
    for name in ("classifier", "bias"):
        state = api.CheckpointState.load_checkpoint(str(warm / "artifacts" / name / "checkpoint"))
        trainable = sorted(n for n, p in state.parameters if p.requires_grad)
        assert trainable == sorted(s[name]["trainable"])


def test_backward_graph_shrinks_with_the_scheme(manifest):
    b = {name: s["backward"] for name, s in manifest["schemes"].items()}
    assert b["full"]["grad_nodes"] > b["last-block"]["grad_nodes"] > b["classifier"]["grad_nodes"] > 0
    assert b["full"]["training_nodes"] > b["last-block"]["training_nodes"] > b["classifier"]["training_nodes"]
    # Weight gradients of the four convolutions: all, the last one, none.
    assert [b[s]["conv_weight_grad_nodes"] for s in ("full", "last-block", "classifier")] == [4, 1, 0]
    # Bias-only keeps the input-gradient path through every conv but the first: memory, not compute.
    assert b["bias"]["conv_grad_nodes"] == 3 and b["bias"]["conv_weight_grad_nodes"] == 0
    assert b["bias"]["grad_nodes"] > b["last-block"]["grad_nodes"]


def test_inference_model_matches_torch(warm, manifest):
    assert manifest["inference_model"]["max_abs_diff_vs_torch"] <= 1e-4
    model, _ = load_checkpoint(warm)
    model.eval()
    session = ort.InferenceSession(str(warm / "artifacts" / "model.onnx"), providers=["CPUExecutionProvider"])
    x, _ = normalised_digits(manifest, 37)   # a batch size the export never saw
    got = session.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_artifacts_train_without_edge_sel(warm, manifest, tmp_path):
    x, y = normalised_digits(manifest, 128)
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    result = subprocess.run([sys.executable, str(STANDALONE), str(warm / "artifacts" / "full"),
                             str(tmp_path / "data.npz"), "--steps", "6", "--lr", "0.01"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    losses = out["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))   # full-batch SGD at a small lr: every step helps
    imports = [ln for ln in STANDALONE.read_text().splitlines() if ln.startswith(("import ", "from "))]
    assert imports and not any("edge_sel" in ln or "torch" in ln for ln in imports)


def test_export_refuses_an_existing_out_and_unknown_schemes(warm, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    r = run_cli("export", "--checkpoint", warm, "--out", tmp_path / "busy", expect=2)
    assert "--overwrite" in r.output
    r = run_cli("export", "--checkpoint", warm, "--out", tmp_path / "a", "--scheme", "half", expect=2)
    assert "--scheme" in r.output
    r = run_cli("export", "--checkpoint", warm, "--out", tmp_path / "b", "--weight-decay", "0.1", expect=2)
    assert "--weight-decay" in r.output   # SGD artifacts have no weight decay
    r = run_cli("export", "--checkpoint", tmp_path / "nope", "--out", tmp_path / "c", expect=2)
    assert "--checkpoint" in r.output
