"""`finetune --backend ort`: the same loop on ORT artifacts, in step with the torch backend."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.training.api")

import onnxruntime as ort  # noqa: E402
from onnxruntime.training import api  # noqa: E402

from helpers import records, run_cli, summary  # noqa: E402
from edge_sel.backends.ort_backend import OrtBackend  # noqa: E402
from edge_sel.backends.ort_manifest import resolve  # noqa: E402
from edge_sel.data import Batch  # noqa: E402
from edge_sel.methods import STRATEGIES  # noqa: E402
from edge_sel.models import load_checkpoint  # noqa: E402

# Dense, plain SGD (what ORT's SGD is), BatchNorm with frozen statistics on both sides.
SAME = ("--optimizer", "sgd", "--momentum", 0, "--weight-decay", 0, "--lr", 0.01, "--bn-mode", "eval",
        "--batch-size", 64, "--seed", 3, "--device", "cpu", "--quiet")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort")
    run_cli("pretrain", "--dataset", "digits", "--epochs", 1, "--batch-size", 64, "--out", root / "ckpt", "--quiet")
    run_cli("export", "--checkpoint", root / "ckpt", "--out", root / "art", "--scheme", "full,classifier", "--quiet")
    return root


def finetune(root, out, *extra, epochs=3, expect=0):
    return run_cli("finetune", "--checkpoint", root / "ckpt", "--dataset", "digits", "--epochs", epochs,
                   "--out", out, *SAME, *extra, expect=expect)


@pytest.fixture(scope="module")
def pair(warm):
    finetune(warm, warm / "torch")
    finetune(warm, warm / "ort", "--backend", "ort", "--artifacts", warm / "art" / "full")
    return records(warm / "torch"), records(warm / "ort")


def test_torch_and_ort_train_alike(pair):
    torch_recs, ort_recs = pair
    assert len(torch_recs) == len(ort_recs) == 3
    for t, o in zip(torch_recs, ort_recs):
        assert abs(o["train_loss"] - t["train_loss"]) <= 0.02 * t["train_loss"], (t["train_loss"], o["train_loss"])
        assert o["backward_samples"] == t["backward_samples"]
        assert o["flops_forward"] == t["flops_forward"] and o["flops_backward"] == t["flops_backward"]
    assert abs(ort_recs[-1]["test_acc"] - torch_recs[-1]["test_acc"]) <= 0.01
    assert ort_recs[-1]["train_loss"] < ort_recs[0]["train_loss"]


def test_ort_run_dir_holds_the_fine_tuned_model(warm, pair):
    run = warm / "ort"
    tuned, _ = load_checkpoint(run)
    start, _ = load_checkpoint(warm / "ckpt")
    assert not torch.equal(tuned.fc.weight, start.fc.weight)
    # BatchNorm statistics stayed frozen (eval mode), as in the torch run.
    assert torch.equal(tuned.features[0][1].running_mean, start.features[0][1].running_mean)
    state = api.CheckpointState.load_checkpoint(str(run / "ort_checkpoint"))
    assert np.array_equal(state.parameters["fc.weight"].data, tuned.fc.weight.detach().numpy())
    tuned.eval()
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tuned(x).numpy()
    assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - expected).max() <= 1e-4
    assert summary(run)["config"]["backend"] == "ort"


def test_classifier_scheme_counts_a_smaller_backward(warm, pair):
    finetune(warm, warm / "head", "--backend", "ort", "--artifacts", warm / "art" / "classifier", epochs=1)
    head, full = records(warm / "head")[0], pair[1][0]
    assert head["flops_forward"] == full["flops_forward"]
    assert 0 < head["flops_backward"] < 0.1 * full["flops_backward"]   # no backward through the convs
    model, _ = load_checkpoint(warm / "ckpt")
    head_share = (model.fc.weight.numel() + model.fc.bias.numel()) / sum(p.numel() for p in model.parameters())
    assert 0 < head["params_updated_frac"] <= head_share + 1e-9


def make_backend(warm):
    model, _ = load_checkpoint(warm / "ckpt")
    directory, scheme, manifest, _ = resolve(warm / "art" / "full")
    backend = OrtBackend(model, directory, manifest, scheme)
    backend.set_lr(0.01)
    return model, backend


def digits_batch(n, weight=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Batch(torch.arange(n), torch.arange(n), x, y, weight)


def test_variable_batch_sizes_and_sample_weights(warm):
    model, backend = make_backend(warm)
    for n in (64, 17, 1):   # gated batches shrink; one session serves them all
        losses, logits = backend.train_step(0, digits_batch(n))
        assert losses.shape == (n,) and logits.shape == (n, 10)
        expected = torch.nn.functional.cross_entropy(logits, digits_batch(n).y, reduction="none")
        assert torch.allclose(losses, expected)
    # Zero weights: no gradient, nothing moves.
    before = model.fc.weight.detach().clone()
    backend.train_step(1, digits_batch(8, torch.zeros(8)))
    assert torch.equal(model.fc.weight, before)
    # Doubled weights: a doubled SGD step, from the same start.
    steps = []
    for w in (1.0, 2.0):
        fresh_model, fresh = make_backend(warm)
        start = fresh_model.fc.weight.detach().clone()
        fresh.train_step(0, digits_batch(8, torch.full((8,), w), seed=5))
        steps.append(fresh_model.fc.weight.detach() - start)
    assert steps[0].abs().max() > 0
    assert torch.allclose(steps[1], 2 * steps[0], atol=1e-6)


@pytest.mark.skipif("random" not in STRATEGIES, reason="random gating not registered")
def test_gated_run_on_ort(warm):
    finetune(warm, warm / "gated", "--backend", "ort", "--artifacts", warm / "art" / "full",
             "--strategy", "random", "--target-activation", 0.5, epochs=2)
    recs = records(warm / "gated")
    for r in recs:
        assert 0.4 <= r["activation"] <= 0.6
        assert r["backward_samples"] < r["samples_available"]
        assert np.isfinite(r["train_loss"]) and r["val_acc"] is not None


def test_mismatches_are_one_line_errors(warm, tmp_path):
    art = warm / "art" / "full"
    cases = [
        (("--backend", "ort", "--artifacts", art, "--optimizer", "adamw"), "--optimizer"),
        (("--backend", "ort", "--artifacts", art, "--momentum", 0.9), "--momentum"),
        (("--backend", "ort", "--artifacts", art, "--weight-decay", 5e-4), "--weight-decay"),
        (("--backend", "ort", "--artifacts", art, "--bn-mode", "train"), "--bn-mode"),
        (("--backend", "ort", "--artifacts", art, "--sparsity", "mask"), "--sparsity"),
        (("--backend", "ort"), "--artifacts"),
        (("--backend", "ort", "--artifacts", tmp_path / "none"), "--artifacts"),
    ]
    for i, (extra, option) in enumerate(cases):
        r = finetune(warm, tmp_path / f"run{i}", *extra, epochs=1, expect=2)
        line = r.output.strip().splitlines()[-1]
        assert line.startswith("edge-sel: error: ") and option in line, r.output
    # Artifacts of another head (4 classes) do not fit a 10-class checkpoint.
    other = tmp_path / "other"
    other.mkdir()
    manifest = json.loads((warm / "art" / "manifest.json").read_text())
    manifest["checkpoint"]["num_classes"] = 4
    manifest["checkpoint"]["tensors"]["fc.weight"] = [4, 256]
    (other / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(art, other / "full")      # a copy: a link out of the export is refused
    r = finetune(warm, tmp_path / "runx", "--backend", "ort", "--artifacts", other / "full", epochs=1, expect=2)
    assert "4 classes" in r.output
