"""A fine-tune never hands back a worse model than it started with: the starting checkpoint is
evaluated first, and the output model is the best by local validation accuracy (or the last, when
asked)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import records, run_cli, stable, summary
from edge_sel.config import TrainConfig
from edge_sel.engine.evaluate import accuracy, predict_dataset
from edge_sel.engine.run import DataOptions, finetune
from edge_sel.engine.state import load_state
from edge_sel.models import load_checkpoint

RUN = ["--dataset", "synthetic", "--batch-size", "16", "--lr", "0.02", "--quiet", "--seed", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def weights_digest(run_dir) -> str:
    return hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()


def tensors(run_dir) -> dict:
    model, _ = load_checkpoint(run_dir)
    return model.state_dict()


def val_accuracy_of_output(run_dir) -> float:
    """Accuracy of the saved output model on the run's validation split, evaluated afresh."""
    model, card = load_checkpoint(run_dir)
    model.eval()
    splits = DataOptions("synthetic").load()
    logits = predict_dataset(lambda x: model(x).float(), splits.val, card.mean, card.std, 256)
    return accuracy(logits, splits.val.labels)


def test_training_that_hurts_hands_back_the_starting_weights_bit_identical(tiny_warm, tmp_path, monkeypatch):
    """Training labels shifted by one class (every label wrong), validation labels clean: every epoch
    is worse than the start on validation, so the output is the warmup, unchanged, and says so."""
    original = DataOptions.load

    def wrong_training_labels(self):
        splits = original(self)
        splits.train.labels = (splits.train.labels + 1) % splits.train.num_classes
        return splits

    monkeypatch.setattr(DataOptions, "load", wrong_training_labels)
    out = tmp_path / "run"
    result = finetune(tiny_warm, DataOptions("synthetic"), TrainConfig(epochs=3, batch_size=16, lr=0.05), out,
                      quiet=True)
    recs = records(out, baseline=True)
    assert recs[0]["phase"] == "baseline" and recs[0]["epoch"] == -1
    assert all(r["val_acc"] < recs[0]["val_acc"] for r in recs[1:]), "construction: training must hurt"
    kept = result["kept"]
    assert kept["kept"] == "warmup" and kept["kept_epoch"] == -1 and kept["fine_tuning_helped"] is False
    assert "did not help" in kept["reason"]
    start, end = tensors(tiny_warm), tensors(out)
    assert start.keys() == end.keys()
    assert all(torch.equal(start[k], end[k]) for k in start)          # bit-identical, BN statistics too
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["kept"] == "warmup"


def test_baseline_record_counts_its_evaluation_and_nothing_else(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", out, "--epochs", "1", *RUN)
    base, first = records(out, baseline=True)
    assert base["forward_samples"] == base["backward_samples"] == 0 and base["flops_train"] == 0
    assert base["flops_eval"] == first["flops_eval"] > 0                   # the same two evaluation passes
    assert base["eval_energy_j"] is not None and base["energy_source"] == first["energy_source"]
    s = summary(out)
    assert s["epochs_run"] == 1
    assert s["totals"]["flops_eval"] == base["flops_eval"] + first["flops_eval"]
    assert s["baseline"]["val_acc"] == base["val_acc"]


def test_a_normal_fine_tune_keeps_its_best_epoch(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", out, "--epochs", "4", *RUN)
    base, *epochs = records(out, baseline=True)
    best = max(epochs, key=lambda r: r["val_acc"])          # the first of equals, as the run chooses
    kept = summary(out)["kept"]
    if best["val_acc"] > base["val_acc"]:
        assert kept["kept"] == "best" and kept["kept_epoch"] == best["epoch"]
        assert kept["fine_tuning_helped"] is True
    else:
        assert kept["kept"] == "warmup"
    assert val_accuracy_of_output(out) == pytest.approx(kept["kept_val_acc"], abs=1e-6)
    assert [r["kept_epoch"] for r in epochs][-1] == kept["kept_epoch"]


def test_keep_last_keeps_the_last_epoch(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", out, "--epochs", "3", "--keep", "last", *RUN)
    kept = summary(out)["kept"]
    assert kept["kept"] == "last" and kept["kept_epoch"] == 2
    assert val_accuracy_of_output(out) == pytest.approx(records(out)[-1]["val_acc"], abs=1e-6)


def test_a_bad_keep_value_is_one_line_exit_2(tiny_warm, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_sel", "finetune", "--checkpoint", str(tiny_warm),
                           "--out", str(tmp_path / "r"), "--epochs", "1", "--keep", "worst", *RUN],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--keep" in proc.stderr


@pytest.mark.slow
def test_a_resumed_run_makes_the_same_choice(tiny_warm, tmp_path):
    args = ["finetune", "--checkpoint", str(tiny_warm), "--epochs", "4", "--checkpoint-every", "3", *RUN]
    reference = tmp_path / "reference"      # a subprocess like the killed run: same thread count
    subprocess.run([sys.executable, "-m", "edge_sel", *args, "--out", str(reference)], check=True)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edge_sel", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.monotonic() + 120
    # Kill once an epoch past the first is under way, so the choice so far lives only in the state.
    while len(records(out)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_state(out / "state")["choice"]["epoch"] is not None
    subprocess.run([sys.executable, "-m", "edge_sel", "finetune", "--resume", str(out), "--quiet"], check=True)
    assert stable(records(out)) == stable(records(reference))
    assert summary(out)["kept"] == summary(reference)["kept"]
    assert weights_digest(out) == weights_digest(reference)
