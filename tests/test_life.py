"""A device's night as one module (engine/life.py): night after night in a temporary home on
digits, a run cut off at its end finished without training, a run that can no longer be resumed
set aside, a stop signal's exit status, and the night's all-in cost."""

import json
import shutil
from pathlib import Path

import pytest

from helpers import records, summary
from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import weights_digest
from edge_sel.engine import faults
from edge_sel.engine.life import Home, latest_run, new_run_name, night, set_aside, unfinished
from edge_sel.engine.run import DataOptions, pretrain
from edge_sel.engine.trainer import Trainer
from edge_sel.errors import InputError

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
    assert lines[0] == f"edge-sel nightly: resuming {stuck}" and "cannot be resumed" in lines[1]
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
    third = night(home, TONIGHT, useless, quiet=True)
    monkeypatch.undo()
    assert third.resumed and third.run_dir == second and third.start is None
    assert third.exit_status == 0 and third.rule == "not-better" and not third.promoted
    assert summary(second)["epochs_run"] == 2 and len(records(second)) == 2
    assert json.loads((second / "promote.json").read_text())["rule"] == "not-better"
    assert weights_digest(home.deployed) == weights_digest(first.run_dir)
    # All in: the run's totals and promote's validation of the deployed model (its FLOPs counted,
    # its joules from a meter window of its own).
    judged = third.decision.evaluation
    assert judged["flops"] > 0 and judged["samples"] == summary(second)["dataset"]["val_samples"]
    assert third.cost["flops_all"] == summary(second)["totals"]["flops_all"] + judged["flops"]
    assert third.cost["energy_all_j"] == pytest.approx(summary(second)["totals"]["energy_all_j"] + judged["energy_j"])
    assert judged["energy_j"] > 0 and judged["energy_source"] == summary(second)["totals"]["energy_source"]

    # Night 4 is stopped by SIGTERM mid-training: checkpointed, not judged, exit 143; the next night
    # would resume it.
    monkeypatch.setenv(faults.SIGNAL_ENV, "step-3:SIGTERM")
    fourth = night(home, TONIGHT, TrainConfig(epochs=2, **FAST), quiet=True)
    assert fourth.exit_status == 143 and fourth.decision is None and not fourth.resumed
    assert latest_run(home.runs) == fourth.run_dir and unfinished(fourth.run_dir)
    assert not (fourth.run_dir / "promote.json").exists()


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
