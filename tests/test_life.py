"""A device's night as one module (engine/night/life.py): night after night in a temporary home on
digits, a run cut off at its end finished without training, a run that can no longer be resumed
set aside, a stop signal's exit status, the night's all-in cost; `edge-sel night`'s settings and
refusals; and the systemd script running a real night through it."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import records, run_cli, run_main, summary
from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import weights_digest
from edge_sel.engine import faults
from edge_sel.engine.night.life import Home, latest_run, new_run_name, night, set_aside, unfinished
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.errors import InputError
from edge_sel.engine.night.journal import last_decision

pytestmark = pytest.mark.usefixtures("one_thread")

# Fixed layout, evaluation batch and precision: nothing is measured before a night starts.
FAST = dict(batch_size=32, memory_format="contiguous", eval_batch_size=256, precision="fp32", seed=1)
TONIGHT = DataOptions("digits", shard="1/2", subset=300)


@pytest.fixture(scope="module")
def warmup(tmp_path_factory):
    """A one-epoch digits warmup on shard 0/2 (the nights use shard 1/2)."""
    out = tmp_path_factory.mktemp("warm") / "ckpt"
    pretrain("edgecnn", DataOptions("digits", shard="0/2", subset=300), TrainConfig(epochs=1, **FAST), out,
             quiet=True)
    return out


def a_home(tmp_path: Path, warmup: Path) -> Home:
    home = Home.at(tmp_path / "home")
    home.warmup.parent.mkdir(parents=True)
    shutil.copytree(warmup, home.warmup)
    return home


def test_night_after_night_through_the_module(warmup, tmp_path, monkeypatch):
    home = a_home(tmp_path, warmup)
    lines, closing = [], []
    # A run left by an older install that can no longer be resumed (its configuration is gone).
    stuck = home.runs / "20000101T000000Z"
    (stuck / "state").mkdir(parents=True)

    # Night 1: the stuck run is set aside (kept), a new run from the warmup helps: deployed as `first`.
    first = night(home, TONIGHT, TrainConfig(epochs=2, **FAST), say=lines.append, trained=closing.append)
    assert first.abandoned == stuck.with_name(stuck.name + ".abandoned") and (first.abandoned / "state").is_dir()
    assert not stuck.exists() and first.start == home.warmup and not first.resumed
    assert first.exit_status == 0 and first.rule == "first" and first.promoted
    assert home.deployed.is_symlink() and weights_digest(home.deployed) == weights_digest(first.run_dir)
    assert lines[0].startswith(f"edge-sel nightly: resuming {stuck} with the options") and "cannot be resumed" in lines[1]
    assert lines[2] == f"edge-sel nightly: new run {first.run_dir} from {home.warmup}"
    assert closing == [first.summary] and first.summary["output_model"]["weights"] != "warmup"
    # Nothing was deployed, so promote validated nothing: the night costs what the run did.
    assert first.cost["flops_all"] == first.summary["totals"]["flops_all"]

    # Night 2 starts from the deployed model, trains nothing useful (a learning rate of 1e-9, frozen
    # BatchNorm) and is cut off after its output model is written, before its summary.
    useless = TrainConfig(epochs=2, lr=1e-9, bn_mode="eval", **FAST)
    monkeypatch.setattr(faults, "crash_by_raising", True)
    monkeypatch.setenv(faults.KILL_ENV, "model-written")
    with pytest.raises(faults.InjectedCrash):
        night(home, TONIGHT, useless, quiet=True)
    monkeypatch.delenv(faults.KILL_ENV)
    second = latest_run(home.runs)
    assert second != first.run_dir and unfinished(second) and not (second / "summary.json").exists()
    assert json.loads((second / "config.json").read_text())["checkpoint"] == str(home.deployed)

    # Night 3 finishes night 2 without training an epoch again, and judges it: not better than the
    # deployed model, so nothing changes and the night still ends in success.
    def no_epoch(*a, **k):
        raise AssertionError("an epoch was trained again")
    monkeypatch.setattr(Trainer, "train_epoch", no_epoch)
    journal = []       # tonight asks for 3 epochs: the resumed run keeps its own 2, and the journal says so
    third = night(home, TONIGHT, dataclasses.replace(useless, epochs=3), quiet=True, say=journal.append)
    monkeypatch.undo()
    assert journal[0] == (f"edge-sel nightly: resuming {second} with the options and data it started with (its "
                          f"config.json); tonight's are set aside (--epochs 3, not 2)"), journal
    assert third.resumed and third.run_dir == second and third.start is None
    assert third.exit_status == 0 and third.rule == "not-better" and not third.promoted
    assert summary(second)["epochs_run"] == 2 and len(records(second)) == 2
    assert last_decision(second)["rule"] == "not-better"
    assert weights_digest(home.deployed) == weights_digest(first.run_dir)
    # All in: the run's totals and promote's validation of the deployed model (its FLOPs counted,
    # its joules from a meter window of its own).
    judged = third.decision.evaluation
    assert judged["flops"] > 0 and judged["samples"] == summary(second)["dataset"]["val_samples"]
    assert third.cost["flops_all"] == summary(second)["totals"]["flops_all"] + judged["flops"]
    assert third.cost["energy_all_j"] == pytest.approx(summary(second)["totals"]["energy_all_j"] + judged["energy_j"])
    assert judged["energy_j"] > 0 and judged["energy_source"] == summary(second)["totals"]["energy_source"]

    # Night 4, through `edge-sel night`, is stopped by SIGTERM mid-training: checkpointed, not judged,
    # exit 143; the next night would resume it.
    monkeypatch.setenv(faults.SIGNAL_ENV, "step-3:SIGTERM")
    output = run_cli("night", "--home", home.runs.parent, "--dataset", "digits", "--shard", "1/2", "--subset", 300,
                     "--epochs", 2, "--profile", "generic", "--batch-size", 32, "--memory-format", "contiguous",
                     "--eval-batch-size", 256, "--precision", "fp32", "--seed", 1, "--quiet", expect=143).output
    fourth = latest_run(home.runs)
    assert fourth != second and unfinished(fourth)
    assert summary(fourth)["stop_signal"] == "SIGTERM" and last_decision(fourth) is None
    assert f"interrupted: state checkpointed; the next night resumes {fourth}" in output


def test_bad_options_fail_before_anything_is_touched(warmup, tmp_path):
    home = a_home(tmp_path, warmup)
    stuck = home.runs / "20000101T000000Z"
    (stuck / "state").mkdir(parents=True)
    with pytest.raises(InputError, match="--lr"):
        night(home, TONIGHT, TrainConfig(epochs=1, lr=-1.0), quiet=True)
    with pytest.raises(InputError, match="run name"):
        night(home, TONIGHT, TrainConfig(epochs=1), run_name="../elsewhere", quiet=True)
    assert sorted(home.runs.iterdir()) == [stuck]          # the stuck run was not even looked at
    shutil.rmtree(home.warmup)
    shutil.rmtree(stuck)
    with pytest.raises(InputError, match="--warmup"):
        night(home, TONIGHT, TrainConfig(epochs=1), quiet=True)
    assert list(home.runs.iterdir()) == []


def test_which_run_a_night_resumes_and_what_it_starts_from(tmp_path):
    runs = tmp_path / "runs"
    assert latest_run(runs) is None
    for name, summary_text in (("20260101T000000Z", '{"stop_reason": null}'), ("20260102T000000Z", None),
                               ("20260103T000000Z.abandoned", None), ("notes", None)):
        (runs / name / "state").mkdir(parents=True)
        if summary_text:
            (runs / name / "summary.json").write_text(summary_text)
    latest = latest_run(runs)
    assert latest == runs / "20260102T000000Z" and unfinished(latest)
    assert not unfinished(runs / "20260101T000000Z")
    for reason, cut in (("interrupted", True), ("energy_budget", False)):
        (latest / "summary.json").write_text(json.dumps({"stop_reason": reason}))
        assert unfinished(latest) == cut
    assert not unfinished(runs / "notes" / "state")          # no state checkpoint of its own
    # A second run that cannot be resumed is set aside beside the first.
    (runs / "20260103T000000Z").mkdir()
    assert set_aside(runs / "20260103T000000Z") == runs / "20260103T000000Z.abandoned.2"
    # Run names sort by start time; a name taken goes to the next second.
    import datetime
    when = datetime.datetime(2026, 1, 2, 0, 0, 0, 250000, tzinfo=datetime.timezone.utc)
    assert new_run_name(runs, when) == "20260102T000001Z"
    # A new run starts from the deployed model once there is one, else from the warmup.
    home = Home.at(tmp_path / "home")
    home.warmup.mkdir(parents=True)
    (home.warmup / "model.safetensors").write_bytes(b"w")
    assert home.start_checkpoint() == home.warmup
    home.deployed.mkdir(parents=True)
    (home.deployed / "model.safetensors").write_bytes(b"d")
    assert home.start_checkpoint() == home.deployed
    assert Home.at(tmp_path, runs=tmp_path / "r").runs == tmp_path / "r"


# ---- edge-sel night ----------------------------------------------------------------------------

def test_night_refuses_bad_options_in_one_line_and_creates_nothing(warmup, tmp_path, capsys):
    home = a_home(tmp_path, warmup)
    for argv, says in ((["--lr", "-1"], "--lr"), (["--epochs", "many"], "--epochs"),
                       (["--bogus"], "--bogus"), (["--replay", "2"], "--replay"),
                       (["--dataset", "folder:" + str(tmp_path / "none")], str(tmp_path / "none")),
                       (["--warmup", tmp_path / "none", "--dataset", "synthetic"], "--warmup"),
                       (["--profile", "no-such-device"], "no-such-device")):
        code, err = run_main(["night", "--home", tmp_path / "home", "--profile", "generic", "--epochs", "1",
                              "--quiet", *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, (argv, err)
        assert "Traceback" not in err and not home.runs.exists() and not home.deployed.exists()


def test_night_takes_the_settings_of_the_units_environment(tmp_path, monkeypatch):
    """The home layout, tonight's data, epochs and profile default to the EDGE_SEL_* settings the
    systemd unit's environment file holds; options given win."""
    from click.testing import CliRunner

    from edge_sel.cli import cli
    from edge_sel.engine.night import life
    seen = {}

    def fake_night(home, data, cfg, energy, profile=None, **kw):
        seen.update(home=home, data=data, cfg=cfg, profile=profile, given=kw["given"])
        raise SystemExit(0)
    monkeypatch.setattr(life, "night", fake_night)
    env = {"EDGE_SEL_HOME": str(tmp_path / "h"), "EDGE_SEL_DEPLOYED": str(tmp_path / "d"),
           "EDGE_SEL_CHECKPOINT": str(tmp_path / "w"), "EDGE_SEL_EPOCHS": "7", "EDGE_SEL_PROFILE": "generic",
           "EDGE_SEL_RUNS": ""}
    result = CliRunner(env=env).invoke(cli, ["night", "--strategy", "sundew", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert seen["home"] == life.Home(tmp_path / "h" / "runs", tmp_path / "d", tmp_path / "w")
    assert seen["data"].dataset == f"folder:{tmp_path / 'h' / 'data'}" and seen["cfg"].epochs == 7
    assert seen["cfg"].strategy == "sundew" and seen["cfg"].seed == 3 and seen["profile"]["name"] == "generic"
    # What a resumed night may name as set aside: the settings given, by option or environment (a
    # night said '--eval-batch-size 0, not 128' where nobody had set it).
    assert {"epochs", "strategy", "seed", "home"} <= seen["given"]
    assert not {"eval_batch_size", "lr", "batch_size", "dataset"} & seen["given"], seen["given"]
    result = CliRunner(env=env).invoke(cli, ["night", "--epochs", "2", "--dataset", "digits", "--runs", tmp_path / "r"])
    assert result.exit_code == 0 and seen["cfg"].epochs == 2 and seen["data"].dataset == "digits"
    assert seen["home"].runs == tmp_path / "r"


# ---- the systemd script, through edge-sel night ------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "systemd" / "run-finetune.sh"


def epoch_lines(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^(epoch \d+ \(\d+ of \d+\)): loss", text, re.M)]


def test_the_systemd_script_runs_a_real_night(warmup, tmp_path):
    home = a_home(tmp_path, warmup)
    edge_sel = tmp_path / "edge-sel"
    edge_sel.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edge_sel "$@"\n')
    edge_sel.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "EDGE_SEL_BIN": str(edge_sel),
           "EDGE_SEL_HOME": str(tmp_path / "home"), "EDGE_SEL_DATASET": "digits", "EDGE_SEL_EPOCHS": "2",
           "EDGE_SEL_PROFILE": "generic", "OMP_NUM_THREADS": "1", "EDGE_SEL_CACHE": os.environ["EDGE_SEL_CACHE"],
           "EDGE_SEL_EXTRA_ARGS": "--shard 1/2 --subset 300 --seed 1 --batch-size 32 --memory-format contiguous "
                                  "--eval-batch-size 256 --precision fp32 --threads 1"}
    # Night 1: nothing deployed; fine-tuning the warmup helps, so its output is deployed. stdout is a
    # pipe, as the journal is: the first epoch's line is read while the run still has an epoch to go
    # (each state write is slowed by 0.5 s, so that window is certain).
    proc = subprocess.Popen(["sh", str(SCRIPT)], text=True, env={**env, "EDGE_SEL_FAULT_SLOW_STATE_WRITE": "0.5"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen = [proc.stdout.readline() for _ in range(4)]
    assert seen[0].startswith("edge-sel nightly: new run ") and seen[2].startswith("start: the starting checkpoint")
    assert seen[1].startswith("start: evaluating the starting checkpoint on ") and seen[1].endswith(" test)\n")
    assert seen[3].startswith("epoch 0 (1 of 2): loss "), seen
    [run1] = sorted(home.runs.iterdir())
    assert proc.poll() is None and len(records(run1)) == 1 and not (run1 / "summary.json").exists()
    rest, _ = proc.communicate(timeout=600)
    out = "".join(seen) + rest
    assert proc.returncode == 0
    assert epoch_lines(out) == ["epoch 0 (1 of 2)", "epoch 1 (2 of 2)"]        # the journal's lines
    assert f"promoted (first): {run1}" in out and "edge-sel nightly: the night all in: " in out
    assert home.deployed.is_symlink() and weights_digest(home.deployed) == weights_digest(run1)
    assert last_decision(run1)["rule"] == "first"


def test_a_swap_cut_off_between_its_renames_is_repaired_before_the_start_is_chosen(warmup, tmp_path, monkeypatch):
    from edge_sel.engine.night import deployed_swap, life
    home = a_home(tmp_path, warmup)
    shutil.copytree(home.warmup, home.deployed)             # a plain deployed directory, as older installs have it
    monkeypatch.setenv("EDGE_SEL_NO_RENAME_EXCHANGE", "1")
    monkeypatch.setattr(faults, "crash_by_raising", True)
    monkeypatch.setenv(faults.KILL_ENV, "promote-exchanged")
    with pytest.raises(faults.InjectedCrash):              # the instant between the two renames
        deployed_swap.swap_in(home.warmup, home.deployed)
    monkeypatch.delenv(faults.KILL_ENV)
    assert not os.path.lexists(home.deployed)
    started = []

    def no_training(start, *a, **k):
        started.append(start)
        raise InputError("stop here")
    monkeypatch.setattr(life, "finetune", no_training)
    with pytest.raises(InputError, match="stop here"):
        night(home, TONIGHT, TrainConfig(epochs=1), quiet=True)
    assert started == [home.deployed] and home.deployed.is_symlink()


def test_a_run_that_fails_to_resume_the_same_way_is_set_aside_after_three_nights(warmup, tmp_path, monkeypatch):
    """Before: only bad input set a run aside; any other deterministic failure while resuming
    retried the same run every night, forever, with no training and no promote."""
    from edge_sel.engine.night import life
    home = a_home(tmp_path, warmup)
    stuck = home.runs / "20000101T000000Z"
    (stuck / "state").mkdir(parents=True)

    def broken(run, quiet, phase):
        raise RuntimeError("the run's state cannot be applied")
    monkeypatch.setattr(life, "resume", broken)
    for n in (1, 2):
        lines = []
        with pytest.raises(RuntimeError):
            night(home, TONIGHT, TrainConfig(epochs=1, **FAST), say=lines.append)
        assert stuck.is_dir() and f"try {n} of 3" in lines[-1]
    lines = []
    third = night(home, TONIGHT, TrainConfig(epochs=1, **FAST), say=lines.append)
    assert third.abandoned == stuck.with_name(stuck.name + ".abandoned") and not stuck.exists()
    assert "failed 3 nights running" in lines[1] and third.exit_status == 0 and third.run_dir != stuck
