"""The unattended loop: promote against the deployed model, an atomic swap that survives a crash at
every step, runs cut off between their last state write and their summary, signals, the journal's
lines and the all-in totals (a whole night, and the nightly script running it: tests/test_life.py)."""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SAME_CHOICES, records, run_cli, run_main, stable, summary
from edge_sel.core.checkpoint import weights_digest
from edge_sel.engine.night import deployed_swap
from edge_sel.engine import faults
from edge_sel.engine.evaluation.evaluate import evaluation_flops
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.models import load_checkpoint
from edge_sel.engine.night import journal

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
RUN = ["--dataset", "synthetic", "--batch-size", "16", "--lr", "0.02", "--seed", "5", "--subset", "400", *SAME_CHOICES]


def finetune(start, out, *extra, expect=0):
    return run_cli("finetune", "--checkpoint", start, "--out", out, "--epochs", "2", *RUN, *extra, expect=expect)


@pytest.fixture(scope="module")
def weak_start(tiny_warm, tmp_path_factory):
    """The warmup with its classifier zeroed: a start that fine-tuning really improves on."""
    import torch

    from edge_sel.core.checkpoint import save_checkpoint
    model, card = load_checkpoint(tiny_warm)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(classifier.weight)
    out = tmp_path_factory.mktemp("weak") / "ckpt"
    save_checkpoint(out, model, card)
    return out


@pytest.fixture(scope="module")
def reference(weak_start, tmp_path_factory):
    """An uninterrupted run that helped: what every cut-off run must end as."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = finetune(weak_start, out)
    assert summary(out)["kept"]["fine_tuning_helped"]
    return out, result.output


def deployed_copy(source: Path, deployed: Path) -> Path:
    """A plain deployed directory as older installs have it, with files of the site's own."""
    deployed.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        shutil.copy2(source / name, deployed / name)
    (deployed / "anchor-notes.txt").write_text("kept across promotions\n")
    (deployed / "extra").mkdir()
    (deployed / "extra" / "fisher.bin").write_bytes(b"\x00" * 16)
    return deployed


def other_files_intact(deployed: Path) -> bool:
    return (deployed / "anchor-notes.txt").read_text() == "kept across promotions\n" and \
        (deployed / "extra" / "fisher.bin").read_bytes() == b"\x00" * 16


def checkpoint_files_only(deployed: Path) -> bool:
    """A promoted version holds the files a checkpoint consists of, never a site's other files
    (they stay with the version before it)."""
    names = set(os.listdir(deployed))
    return {"model.safetensors", "model.json"} <= names and not names & {"anchor-notes.txt", "extra"}


def with_summary(run: Path, out: Path, **changes) -> Path:
    """A copy of a run directory whose summary says something else (e.g. another outcome)."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("state"))
    s = summary(out)
    for key, value in changes.items():
        s[key] = {**s[key], **value} if isinstance(value, dict) else value
    (out / "summary.json").write_text(json.dumps(s))
    return out


# ---- promote -----------------------------------------------------------------------------------

def test_promote_judges_against_the_deployed_model_and_refuses_what_it_must(tiny_warm, weak_start, reference,
                                                                            tmp_path, capsys):
    run, _ = reference
    deployed = deployed_copy(weak_start, tmp_path / "deployed")
    start = weights_digest(deployed)
    # A pretrain directory and an interrupted run: exit 3, nothing touched.
    result = run_cli("promote", tiny_warm, "--deployed", deployed, expect=3)
    assert "not promoted (pretrain)" in result.output
    cut = with_summary(run, tmp_path / "cut", stop_reason="interrupted")
    assert "not promoted (interrupted)" in run_cli("promote", cut, "--deployed", deployed, expect=3).output
    # Worse than the deployed model (it is the run's start, validated afresh on the run's own split:
    # the same accuracy the run measured for its start).
    worse = with_summary(run, tmp_path / "worse", output_model={"val_acc": 0.0})
    result = run_cli("promote", worse, "--deployed", deployed, expect=3)
    assert "not promoted (not-better)" in result.output and "deployed model validated on" in result.output
    judged = journal.last_decision(worse)
    assert judged["deployed_val_acc"] == pytest.approx(summary(run)["kept"]["baseline_val_acc"], abs=1e-6)
    assert judged["evaluation"]["flops"] > 0 and judged["evaluation"]["samples"] == summary(run)["dataset"]["val_samples"]
    assert weights_digest(deployed) == start and not deployed.is_symlink()
    # A tie is not better: equal validation accuracy keeps the deployed model (a `>=` would swap).
    tie = with_summary(run, tmp_path / "tie", output_model={"val_acc": judged["deployed_val_acc"]})
    assert "not promoted (not-better)" in run_cli("promote", tie, "--deployed", deployed, expect=3).output
    assert weights_digest(deployed) == start and not deployed.is_symlink()
    # Better (the real run): swapped in; the directory becomes a link to a version holding the
    # checkpoint's files; the site's other files stay with the old directory, kept as a version.
    better = run
    assert "promoted (better)" in run_cli("promote", better, "--deployed", deployed).output
    assert deployed.is_symlink() and weights_digest(deployed) == weights_digest(run)
    assert checkpoint_files_only(deployed)
    (old,) = deployed_swap.versions_dir(deployed).glob("*.migrated-from-plain")
    assert other_files_intact(old)
    load_checkpoint(deployed)
    # The deployed model is now the run's output: promoting it again says so and writes nothing.
    record = journal.run_path(better).read_bytes()
    result = run_cli("promote", better, "--deployed", deployed)
    assert result.output.startswith(f"already deployed: {better}: its model is the one deployed now")
    assert journal.run_path(better).read_bytes() == record
    # A run from the old start is refused without --force.
    other = with_summary(run, tmp_path / "other", output_model={"val_acc": 0.99})
    (other / "model.json").write_text(json.dumps({**json.loads((other / "model.json").read_text()), "note": "other"}))
    result = run_cli("promote", other, "--deployed", deployed, expect=3)
    assert "not promoted (other-start)" in result.output
    (other / "summary.json").write_text((worse / "summary.json").read_text())
    assert "not promoted (not-better)" in run_cli("promote", other, "--deployed", deployed, "--force",
                                                  expect=3).output
    journal.run_path(run).unlink(missing_ok=True)
    # Not a run directory: one line, exit 2.
    code, err = run_main(["promote", tmp_path / "nothing", "--deployed", deployed], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "RUN" in err


@contextlib.contextmanager
def read_only(directory: Path):
    """A directory nobody may write into: mode 555, and for root (whom modes do not stop) the
    immutable attribute; skips where neither holds."""
    os.chmod(directory, 0o555)
    immutable = False
    try:
        probe = directory / ".probe"
        try:
            probe.touch()
            probe.unlink()
            immutable = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        except OSError:
            pass
        try:
            probe.touch()
            probe.unlink()
            pytest.skip("cannot make a read-only directory here")
        except OSError:
            pass
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        os.chmod(directory, 0o755)


def test_a_read_only_target_is_one_line_and_the_deployed_model_stays(weak_start, reference, tmp_path, capsys):
    run, _ = reference
    deployed = deployed_copy(weak_start, tmp_path / "site" / "deployed")
    with read_only(deployed.parent):
        code, err = run_main(["promote", run, "--deployed", deployed], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"--deployed {deployed}: cannot write its history" in err and "the deployed model is unchanged" in err
    assert weights_digest(deployed) == weights_digest(weak_start) and other_files_intact(deployed)
    journal.run_path(run).unlink(missing_ok=True)


@pytest.mark.parametrize("layout", ["plain", "link", "plain-two-renames"])
def test_a_crash_at_every_step_of_the_swap_leaves_a_loadable_deployed_model(weak_start, reference, tmp_path,
                                                                             monkeypatch, layout):
    run, _ = reference
    old, new = weights_digest(weak_start), weights_digest(run)
    monkeypatch.setattr(faults, "crash_by_raising", True)
    if layout == "plain-two-renames":
        monkeypatch.setenv("EDGE_SEL_NO_RENAME_EXCHANGE", "1")
    steps = ["promote-staged", "promote-versioned", "promote-flipped"] + \
        (["promote-exchanged"] if layout.startswith("plain") else [])
    for step in steps:
        deployed = deployed_copy(weak_start, tmp_path / step / "deployed")
        if layout == "link":
            deployed_swap.swap_in(weak_start, deployed)          # already a link to a version
        monkeypatch.setenv(faults.KILL_ENV, step)
        with pytest.raises(faults.InjectedCrash):
            deployed_swap.swap_in(run, deployed)
        monkeypatch.delenv(faults.KILL_ENV)
        if layout == "plain-two-renames" and step == "promote-exchanged":
            # The one instant without a deployed path (no atomic exchange here): the next promote
            # repairs it before anything else.
            assert not deployed.exists()
            deployed_swap.recover(deployed)
        assert weights_digest(deployed) in (old, new), step
        load_checkpoint(deployed)
        plain_old = weights_digest(deployed) == old and layout != "link"
        assert other_files_intact(deployed) if plain_old else checkpoint_files_only(deployed), step
        deployed_swap.swap_in(run, deployed)                   # the next promote completes
        assert weights_digest(deployed) == new and checkpoint_files_only(deployed)
        versions = deployed_swap.versions_dir(deployed)
        assert not list(versions.glob("*.tmp")) and len(list(versions.iterdir())) <= 2


# ---- cut off after the last epoch --------------------------------------------------------------

@pytest.mark.parametrize("point", ["last-state", "tested", "model-written"])
def test_a_run_cut_off_after_its_last_epoch_resumes_to_the_same_outputs_without_training(
        weak_start, reference, tmp_path, monkeypatch, point):
    ref, _ = reference
    out = tmp_path / "run"
    monkeypatch.setattr(faults, "crash_by_raising", True)
    monkeypatch.setenv(faults.KILL_ENV, point)
    with pytest.raises(faults.InjectedCrash):
        finetune(weak_start, out, "--quiet")
    monkeypatch.delenv(faults.KILL_ENV)
    assert not (out / "summary.json").exists()

    def no_epoch(*a, **k):
        raise AssertionError("an epoch was trained again")
    monkeypatch.setattr(Trainer, "train_epoch", no_epoch)
    run_cli("finetune", "--resume", out, "--quiet")
    assert stable(records(out, baseline=True)) == stable(records(ref, baseline=True))
    assert summary(out)["kept"] == summary(ref)["kept"]
    assert summary(out)["output_model"] == summary(ref)["output_model"]
    assert weights_digest(out) == weights_digest(ref)
    assert "already finished" in run_cli("finetune", "--resume", out, expect=2).output


# ---- signals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_mid_training_exits_130_or_143_and_concludes_nothing(tiny_warm, tmp_path, monkeypatch, sig, code):
    monkeypatch.setenv(faults.SIGNAL_ENV, f"step-3:{sig}")
    result = finetune(tiny_warm, tmp_path / "run", "--bn-mode", "eval", "--lr", "1e-9", expect=code)
    assert f"continue with: edge-sel finetune --resume {tmp_path / 'run'}" in result.output
    assert "did not help" not in result.output
    s = summary(tmp_path / "run")
    assert s["stop_reason"] == "interrupted" and s["stop_signal"] == sig
    assert s["kept"]["fine_tuning_helped"] is None


def test_a_ctrl_c_after_the_last_epoch_keeps_the_closing_lines(weak_start, reference, tmp_path, monkeypatch):
    ref, _ = reference
    monkeypatch.setenv(faults.SIGNAL_ENV, "tested:SIGINT")
    result = finetune(weak_start, tmp_path / "run")          # exit 0: the run had completed
    assert "output model" in result.output and "run directory:" in result.output
    assert summary(tmp_path / "run")["stop_reason"] is None
    assert weights_digest(tmp_path / "run") == weights_digest(ref)


def test_a_ctrl_c_while_importing_is_one_line_and_exit_130():
    code = ("import edge_sel.cli_interrupts as c; c.quiet_start_up_interrupts(force=True); "
            "print('ready', flush=True); import time; [time.sleep(0.05) for _ in range(200)]; import edge_sel.cli")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "edge-sel: interrupted\n"


# ---- what a device's log and summary say -------------------------------------------------------

def test_console_and_summary_give_the_output_models_test_accuracy_and_all_in_costs(weak_start, tmp_path,
                                                                                     monkeypatch):
    """Its last epoch trained on labels shifted by one class, the run validates that epoch resolvably
    below the first and keeps the first: the output model's own test pass is run and charged to the
    last record."""
    original = Trainer._train_step

    def wrong_labels_in_the_last_epoch(self, epoch, i, nb, batch, progress):
        if epoch == self.config.epochs - 1:
            batch = dataclasses.replace(batch, y=(batch.y + 1) % len(self.class_names))
        return original(self, epoch, i, nb, batch, progress)
    monkeypatch.setattr(Trainer, "_train_step", wrong_labels_in_the_last_epoch)
    out = tmp_path / "run"
    output = finetune(weak_start, out, "--lr", "0.2", "--schedule", "constant").output
    s, recs = summary(out), records(out, baseline=True)
    t, kept = s["totals"], s["kept"]
    assert kept["kept"] == "best" and kept["kept_epoch"] < recs[-1]["epoch"]
    assert kept["overruled"][-1]["epoch"] == recs[-1]["epoch"] and kept["overruled"][-1]["p"] < 0.05
    # Chosen on 64 validation images, on which the last epoch was resolvably worse, and said so.
    assert s["output_model"] == {"weights": "best", "epoch": kept["kept_epoch"], "val_acc": kept["kept_val_acc"],
                                 "test_acc": kept["kept_test_acc"], "chosen_on_val_images": 64,
                                 "could_not_tell": False}
    assert "on them the last epoch was resolvably worse" in output
    assert kept["kept_test_acc"] is not None
    last = recs[-1]
    test_size = s["dataset"]["test_samples"]
    assert last["kept_test_flops"] == evaluation_flops_of(weak_start, test_size, s["config"]["eval_batch_size"]) > 0
    assert t["flops_eval"] == sum(r["flops_eval"] for r in recs)
    assert t["flops_all"] == t["flops_train"] + t["flops_eval"] + s["layout"]["probe_flops"]
    assert t["energy_all_j"] == pytest.approx(t["energy_j"] + t["eval_energy_j"])
    assert t["eval_energy_j"] == pytest.approx(sum(r["eval_energy_j"] for r in recs))
    assert last["kept_test_energy_j"] is not None and last["eval_energy_j"] >= last["kept_test_energy_j"]
    line = next(ln for ln in output.splitlines() if ln.startswith("output model ("))
    assert line.startswith(f"output model (epoch {kept['kept_epoch']}): test acc {kept['kept_test_acc']:.3f}")
    assert f"{t['energy_all_j']:.1f} J" in line and f"{t['flops_all'] / 1e9:.2f} GFLOP" in line


def evaluation_flops_of(checkpoint, n, batch):
    from edge_sel.core.flops import FlopCounter
    model, card = load_checkpoint(checkpoint)
    return evaluation_flops(FlopCounter(model, card.input_shape), n, batch)


def test_validation_is_sized_to_at_most_a_fifth_of_the_counted_compute():
    from edge_sel.config import TrainConfig
    from edge_sel.core.flops import FlopCounter
    from edge_sel.engine.loop.val_size import MIN_SAMPLES, device_val_size
    from edge_sel.methods.presets import apply_preset
    from edge_sel.models import build_model
    cfg = apply_preset(TrainConfig(epochs=3, batch_size=64, bn_adapt=500, method={"preset": "adapt"},
                                   sparsity=None, strategy="dense"))
    assert cfg.val_share == 0.2 and cfg.val_subset == 0
    flops = FlopCounter(build_model("edgecnn", 10, 3), [3, 32, 32])
    big = device_val_size(cfg, "finetune", 45000, 5000, flops)
    assert MIN_SAMPLES < big["val_subset"] < 5000 and big["validation_passes"] == 1 + 1 + 3
    assert big["expected_validation_flops"] <= 0.25 * big["expected_training_flops"]
    assert big["expected_validation_flops"] > 0.24 * big["expected_training_flops"]     # no smaller than it must be
    tiny = device_val_size(cfg, "finetune", 200, 5000, flops)
    assert tiny["val_subset"] == MIN_SAMPLES                    # a floor: fewer samples would judge by noise
    assert device_val_size(cfg, "finetune", 45000, 100, flops)["val_subset"] == 100      # never more than the split
    given = apply_preset(TrainConfig(val_subset=800, method={"preset": "adapt"}, sparsity=None))
    assert given.val_share == 0.0                               # the user's --val-subset wins
