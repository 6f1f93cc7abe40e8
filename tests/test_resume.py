"""Crash safety: SIGKILL at several points (one mid-checkpoint write), SIGTERM, torn checkpoints,
non-finite losses, a vanishing sensor, a full disk — and a resumed run that ends with the same
records as one never interrupted."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from fake_sysfs import orin_nano
from helpers import SAME_CHOICES, records, run_cli, stable
from edge_sel.core import temp_file
from edge_sel.engine.loop import checkpointing
from edge_sel.engine.loop import state as state_mod
from edge_sel.engine.loop.state import load_state, save_state

FINETUNE = ["--dataset", "synthetic", "--epochs", "3", "--batch-size", "16", "--checkpoint-every", "4",
            "--lr", "0.02", "--quiet", "--seed", "7", *SAME_CHOICES]


def cli_argv(*args):
    return [sys.executable, "-m", "edge_sel", *map(str, args)]


@pytest.fixture(scope="module")
def reference(tiny_warm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", out, *FINETUNE)
    return stable(records(out))


def start(warm, out, env=None):
    return subprocess.Popen(cli_argv("finetune", "--checkpoint", warm, "--out", out, *FINETUNE),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for(condition, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"finished before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)


def kill_when(condition, proc):
    """SIGKILL the run once `condition()` holds, and reap it."""
    wait_for(condition, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def resume_to_end(out):
    proc = subprocess.run(cli_argv("finetune", "--resume", out, "--quiet"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return stable(records(out))


def state_progress(out):
    try:
        return load_state(out / "state")["progress"] is not None
    except Exception:
        return False


def test_sigkill_after_an_epoch_record_then_resume(tiny_warm, reference, tmp_path):
    out = tmp_path / "run"
    kill_when(lambda: len(records(out)) >= 1, start(tiny_warm, out))
    assert resume_to_end(out) == reference


def test_sigkill_mid_epoch_then_resume(tiny_warm, reference, tmp_path):
    out = tmp_path / "run"
    kill_when(lambda: len(records(out)) >= 1 and state_progress(out), start(tiny_warm, out))
    assert state_progress(out)           # really killed inside an epoch
    assert resume_to_end(out) == reference


def test_sigkill_mid_checkpoint_write_then_resume(tiny_warm, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(tiny_warm, out, env={"EDGE_SEL_FAULT_SLOW_STATE_WRITE": "5"})
    # The third state write (after the initial one and one mid-epoch) is cut in half.
    seen = []
    while len(seen) < 3:
        line = proc.stderr.readline()
        assert line, f"run ended early: {proc.communicate()}"
        if "state write in progress" in line:
            seen.append(line)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    torn = list((out / "state").glob(".state.tmp*"))
    assert torn and torn[0].stat().st_size > 0     # a half-written file was left behind
    assert resume_to_end(out) == reference


def test_sigterm_checkpoints_and_exits_143_with_resume_hint(tiny_warm, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(tiny_warm, out)
    wait_for(lambda: len(records(out)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr        # a clean stop by SIGTERM, as systemd expects it
    assert f"edge-sel finetune --resume {out}" in stdout
    assert json.loads((out / "summary.json").read_text())["stop_reason"] == "interrupted"
    assert resume_to_end(out) == reference


def test_torn_current_checkpoint_falls_back_to_previous(tmp_path):
    save_state(tmp_path, {"n": 1, "w": torch.arange(5)})
    save_state(tmp_path, {"n": 2, "w": torch.arange(5)})
    current = tmp_path / "current.pt"
    current.write_bytes(current.read_bytes()[:-7])       # torn: its tail never reached the disk
    with pytest.warns(UserWarning, match="resuming from"):
        assert load_state(tmp_path)["n"] == 1
    data = bytearray((tmp_path / "previous.pt").read_bytes())
    data[-3] ^= 0xFF                                     # a flipped bit is caught by the checksum
    (tmp_path / "previous.pt").write_bytes(bytes(data))
    with pytest.raises(state_mod.NoValidState, match="checksum"):
        load_state(tmp_path)


def test_resume_from_a_torn_checkpoint_still_matches(tiny_warm, reference, tmp_path):
    out = tmp_path / "run"
    kill_when(lambda: len(records(out)) >= 2, start(tiny_warm, out))
    current = out / "state" / "current.pt"
    current.write_bytes(current.read_bytes()[: len(current.read_bytes()) // 2])
    assert resume_to_end(out) == reference


def _patch_nan(monkeypatch, bad_calls):
    from edge_sel.backends.torch_backend import TorchBackend
    original = TorchBackend.train_step
    calls = {"n": 0}

    def train_step(self, step, batch):
        losses, logits = original(self, step, batch)
        calls["n"] += 1
        if bad_calls(calls["n"]):
            losses = losses * float("nan")
        return losses, logits
    monkeypatch.setattr(TorchBackend, "train_step", train_step)


def test_nan_loss_rolls_back_and_halves_the_learning_rate(tiny_warm, reference, tmp_path, monkeypatch):
    _patch_nan(monkeypatch, lambda n: n == 10)
    copied, real_capture = [], checkpointing.capture

    def capture(trainer):       # a state save holds the CPU model's own tensors, no copy of them
        state = real_capture(trainer)
        live = trainer.model.state_dict()
        copied.append(sum(state["model"][k].data_ptr() != v.data_ptr() for k, v in live.items()))
        return state
    monkeypatch.setattr(checkpointing, "capture", capture)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli("finetune", "--checkpoint", tiny_warm, "--out", tmp_path / "run", *FINETUNE)
    recs = records(tmp_path / "run")
    assert len(recs) == 3 and recs[-1]["nonfinite_events"] == 1
    assert any("rolled back" in str(w.message) for w in caught)
    # Epoch 0 ends a third of the way down the cosine (lr 0.015 scheduled): the rolled-back run is at half.
    assert reference[0]["lr_end"] == pytest.approx(0.015, rel=0.05)
    assert recs[0]["lr_end"] == pytest.approx(0.5 * reference[0]["lr_end"], rel=1e-6)
    # Checkpoints every 4 steps: steps 9 and 10 (the non-finite one) were computed, then thrown away.
    steps = reference[0]["backward_samples"] // 16               # full batches of 16
    assert reference[0]["backward_samples"] == 16 * steps
    per_step = (reference[0]["flops_forward"] + reference[0]["flops_backward"]) // steps
    assert recs[0]["rolled_back_samples"] == 2 * 16 and recs[0]["rolled_back_flops"] == 2 * per_step
    assert recs[0]["flops_train"] == reference[0]["flops_train"] + 2 * per_step
    assert recs[0]["rolled_back_s"] > 0 and recs[0]["rolled_back_j"] > 0
    assert recs[1]["rolled_back_samples"] == 0
    assert len(copied) > 3 and set(copied) == {0}


def test_deferred_reads_roll_back_every_step_since_the_checkpoint(tiny_warm, reference, tmp_path, monkeypatch):
    """Reads every 3 steps, and at each checkpoint (every 4 steps): after the checkpoint at step 8
    the next read is at step 11, so the NaN of step 10 is seen there and steps 9-11 were computed
    and thrown away; their cost stays counted."""
    _patch_nan(monkeypatch, lambda n: n == 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_cli("finetune", "--checkpoint", tiny_warm, "--out", tmp_path / "run", *FINETUNE, "--sync-every", "3")
    recs = records(tmp_path / "run")
    assert recs[-1]["nonfinite_events"] == 1
    steps = reference[0]["backward_samples"] // 16
    per_step = (reference[0]["flops_forward"] + reference[0]["flops_backward"]) // steps
    assert recs[0]["rolled_back_samples"] == 3 * 16 and recs[0]["rolled_back_flops"] == 3 * per_step
    assert recs[0]["lr_end"] == pytest.approx(0.5 * reference[0]["lr_end"], rel=1e-6)


def test_nan_three_times_in_a_row_stops_with_a_valid_checkpoint(tiny_warm, tmp_path, monkeypatch):
    _patch_nan(monkeypatch, lambda n: n >= 6)
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--out", tmp_path / "run", *FINETUNE, expect=1)
    assert "non-finite" in result.output and "Traceback" not in result.output
    assert load_state(tmp_path / "run" / "state")["step"] >= 0


def test_a_vanishing_sensor_lowers_coverage_and_warns_once(tiny_warm, tmp_path, monkeypatch):
    rails = orin_nano(tmp_path / "root")
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path / "root"))
    from edge_sel.methods.base import Strategy
    original = Strategy.observe
    seen = {"n": 0}

    def observe(self, batch, losses, logits):
        seen["n"] += 1
        if seen["n"] == 40:       # mid-run, the module's input rail disappears
            for path in rails["VDD_IN"]:
                Path(path).unlink()
        return original(self, batch, losses, logits)
    monkeypatch.setattr(Strategy, "observe", observe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli("finetune", "--checkpoint", tiny_warm, "--out", tmp_path / "run", *FINETUNE)
    recs = records(tmp_path / "run")
    assert len(recs) == 3
    assert recs[0]["energy_coverage"] == pytest.approx(1.0)
    assert min(r["energy_coverage"] for r in recs) < 1.0
    energy_warnings = [w for w in caught if "VDD_IN" in str(w.message) or "energy" in str(w.message).lower()]
    assert len(energy_warnings) == 1


def test_full_disk_is_a_clear_error_and_the_last_checkpoint_survives(tiny_warm, tmp_path, monkeypatch):
    real_open = open
    writes = {"n": 0}

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and ".state.tmp" in str(path):
            writes["n"] += 1
            if writes["n"] >= 4:
                return FullDisk(f)
        return f
    monkeypatch.setattr(temp_file, "open", fake_open, raising=False)      # where the state's file is made
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--out", tmp_path / "run", *FINETUNE, expect=1)
    assert "No space left on device" in result.output and "last good checkpoint is intact" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert load_state(tmp_path / "run" / "state")["step"] > 0
    assert not list((tmp_path / "run" / "state").glob(".state.tmp*"))


def test_resume_bad_inputs_exit_2(tiny_warm, tmp_path):
    result = run_cli("finetune", "--resume", tmp_path / "nothing", expect=2)
    assert "no such directory" in result.output
    (tmp_path / "empty").mkdir()
    result = run_cli("finetune", "--resume", tmp_path / "empty", expect=2)
    assert "config.json is missing" in result.output
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", tmp_path / "done", *FINETUNE[:-2], "--epochs", "1")
    result = run_cli("finetune", "--resume", tmp_path / "done", expect=2)
    assert "already finished" in result.output


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_ort_backend_resumes_to_the_same_records(tiny_warm, tmp_path, optimizer):
    """AdamW's moments live in ORT's checkpoint state: a resume that lost them would diverge."""
    pytest.importorskip("onnxruntime.training.api")
    decay = 0 if optimizer == "sgd" else 0.01
    run_cli("export", "--checkpoint", tiny_warm, "--out", tmp_path / "art", "--scheme", "last-block", "--quiet",
            "--optimizer", optimizer, "--weight-decay", decay)
    args = ["finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", 2, "--batch-size", 32,
            "--backend", "ort", "--artifacts", tmp_path / "art" / "last-block", "--optimizer", optimizer,
            "--momentum", 0, "--weight-decay", decay, "--lr", 0.01, "--checkpoint-every", 0, "--quiet"]
    run_cli(*args, "--out", tmp_path / "ref")
    run_cli(*args, "--out", tmp_path / "cut")
    state = tmp_path / "cut" / "state"
    # Back to the checkpoint written at the end of epoch 0, as if the run had died right after it.
    (state / "current.pt").write_bytes((state / "previous.pt").read_bytes())
    assert load_state(state)["next_epoch"] == 1
    (tmp_path / "cut" / "summary.json").unlink()       # such a run never wrote its summary
    run_cli("finetune", "--resume", tmp_path / "cut", "--quiet")
    assert stable(records(tmp_path / "cut")) == stable(records(tmp_path / "ref"))


def test_a_pretrain_stopped_in_its_first_epoch_is_no_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    from edge_sel.engine.faults import SIGNAL_ENV
    from helpers import run_main
    out = tmp_path / "warm"
    monkeypatch.setenv(SIGNAL_ENV, "step-2:SIGINT")         # a Ctrl-C at the second step of the first epoch
    result = run_cli("pretrain", "--dataset", "synthetic", "--epochs", "3", "--batch-size", "16", "--out", out,
                     expect=130)
    monkeypatch.delenv(SIGNAL_ENV)
    assert "best val - (epoch None)" not in result.output and "0.00 G" not in result.output
    assert "stopped before its first epoch of 3 epochs finished" in result.output
    assert "no checkpoint written" in result.output and f"edge-sel pretrain --resume {out}" in result.output
    assert not (out / "model.safetensors").exists() and not (out / "model.json").exists()
    code, err = run_main(["finetune", "--checkpoint", out, "--dataset", "synthetic", "--epochs", "1",
                          "--out", tmp_path / "ft"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--checkpoint {out}: a pretrain that stopped after 0 of 3 epochs, not a checkpoint; finish it with: " \
           f"edge-sel pretrain --resume {out}" in err
    assert not (tmp_path / "ft").exists()
    run_cli("pretrain", "--resume", out, "--quiet")          # finished, it is a checkpoint with its source memory
    assert (out / "model.safetensors").is_file() and (out / "anchors.safetensors").is_file()
    run_cli("finetune", "--checkpoint", out, "--dataset", "synthetic", "--epochs", "1", "--out", tmp_path / "ft",
            "--quiet")
