"""The night's rules (edge_sel/engine/night/life.py) one function at a time, in milliseconds: the
home's layout and its refusals, which run a night resumes, sets aside or starts, the third night of
the same failure, the damaged deployed model or bank set aside, what the journal says, and the
night's all-in cost. No model is trained or loaded: runs are directories of the files the module
reads, and the engine's fine-tune, resume and promote are stand-ins that record their calls.
tests/test_life.py runs real nights."""

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from edge_sel.config import NIGHT_BN_CONDITIONS, TrainConfig
from edge_sel.core.source_memory import SOURCE_FILES
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.night import deployed_swap, journal, life
from edge_sel.engine.night import promote as pr
from edge_sel.engine.night.life import Home, NightResult
from edge_sel.engine.night.promote import Decision
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.errors import InputError, WriteError

pytestmark = pytest.mark.usefixtures("one_thread")

TONIGHT = DataOptions("digits", shard="1/2", subset=300)
NIGHTLY = "edge-sel nightly: "


def a_home(tmp_path: Path, deployed: bool = False) -> Home:
    """A home with a warmup (and a plain deployed directory when asked); model files are text."""
    home = Home.at(tmp_path / "home")
    home.warmup.mkdir(parents=True)
    (home.warmup / "model.safetensors").write_text("warmup")
    if deployed:
        home.deployed.mkdir(parents=True)
        (home.deployed / "model.safetensors").write_text("deployed")
    return home


def a_run(runs: Path, name: str, *, state: bool = True, summary=None, config=None) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    if state:
        (run / "state").mkdir()
    if summary is not None:
        (run / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    if config is not None:
        (run / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return run


class Engine:
    """Stand-ins for the engine's finetune, resume and promote, recording every call."""

    def __init__(self, monkeypatch, summary=None, resumed=None, decision=None, conditions=0):
        self.calls = []
        self.summary = summary if summary is not None else {"stop_reason": None, "totals": {"flops_all": 10}}
        self.resumed = resumed                      # an exception to raise, or the summary to return
        self.decision = decision or Decision(True, "first", "nothing deployed")
        self.conditions = conditions
        monkeypatch.setattr(life, "finetune", self.finetune)
        monkeypatch.setattr(life, "resume", self.resume)
        monkeypatch.setattr(life, "promote", self.promote)
        monkeypatch.setattr(life, "conditions_for", self.conditions_for)

    def finetune(self, start, data, cfg, out, **kw):
        self.calls.append(("finetune", start, data, cfg, out, kw))
        out.mkdir(parents=True)
        return self.summary

    def resume(self, run, quiet, phase=None):
        self.calls.append(("resume", run, quiet, phase))
        if isinstance(self.resumed, BaseException):
            raise self.resumed
        return self.resumed if self.resumed is not None else self.summary

    def promote(self, run_dir, deployed, evaluate=None):
        self.calls.append(("promote", run_dir, deployed, evaluate))
        return self.decision

    def conditions_for(self, start, backend):
        self.calls.append(("conditions_for", start, backend))
        return self.conditions

    def names(self):
        return [c[0] for c in self.calls]


# ---- the home ---------------------------------------------------------------------------------

def test_a_home_is_laid_out_under_one_directory_unless_a_place_is_given(tmp_path):
    home = Home.at(tmp_path)
    assert (home.runs, home.deployed, home.warmup) == (tmp_path / "runs", tmp_path / "checkpoints" / "deployed",
                                                       tmp_path / "checkpoints" / "warmup")
    assert home.said == {} and Home(tmp_path, tmp_path, tmp_path).said == {}
    given = Home.at(str(tmp_path), runs=str(tmp_path / "r"), deployed=str(tmp_path / "d"), warmup=str(tmp_path / "w"),
                    said={"runs": "EDGE_SEL_RUNS"})
    assert (given.runs, given.deployed, given.warmup) == (tmp_path / "r", tmp_path / "d", tmp_path / "w")
    assert isinstance(given.runs, Path) and isinstance(given.deployed, Path) and isinstance(given.warmup, Path)
    assert given.said == {"runs": "EDGE_SEL_RUNS"}
    # How a place was said is no part of where it is.
    assert given == Home.at(tmp_path, runs=tmp_path / "r", deployed=tmp_path / "d", warmup=tmp_path / "w")


def test_a_place_is_named_as_the_user_set_it(tmp_path):
    said = {"runs": "EDGE_SEL_RUNS"}
    home = Home.at(tmp_path, said=said)
    said["runs"] = "changed later"                       # the home keeps its own copy
    assert home.named("runs") == "EDGE_SEL_RUNS" and home.named("warmup") == "--warmup"


def test_runs_under_a_file_are_refused_naming_the_place_as_said(tmp_path):
    (tmp_path / "file").write_text("")
    home = Home.at(tmp_path, runs=tmp_path / "file" / "a" / "runs", said={"runs": "EDGE_SEL_RUNS"})
    with pytest.raises(InputError) as e:
        home.check_runs_writable()
    assert str(e.value) == (f"EDGE_SEL_RUNS {tmp_path / 'file' / 'a' / 'runs'}: cannot create "
                            f"({tmp_path / 'file'} is not a directory)")
    assert not (tmp_path / "file" / "a").exists()


def test_runs_are_checked_writable_at_the_nearest_existing_directory_and_never_created(tmp_path, monkeypatch):
    """A mutant that stopped the walk up at once, or walked past the nearest existing directory,
    passed before."""
    asked = []

    def access(path, mode):
        asked.append((Path(path), mode))
        return Path(path) != tmp_path / "ro"
    monkeypatch.setattr(life.os, "access", access)
    (tmp_path / "ok").mkdir()
    Home.at(tmp_path, runs=tmp_path / "ok" / "x" / "y").check_runs_writable()
    Home.at(tmp_path, runs=tmp_path / "ok").check_runs_writable()
    assert asked == [(tmp_path / "ok", os.W_OK | os.X_OK)] * 2
    assert list((tmp_path / "ok").iterdir()) == []
    (tmp_path / "ro").mkdir()
    with pytest.raises(InputError) as e:
        Home.at(tmp_path, runs=tmp_path / "ro" / "runs").check_runs_writable()
    assert str(e.value) == (f"--runs {tmp_path / 'ro' / 'runs'}: cannot write in {tmp_path / 'ro'} "
                            f"(read-only or not permitted)")


def test_a_relative_runs_path_is_checked_at_the_working_directory(tmp_path, monkeypatch):
    """The walk up ends where a path is its own parent ('.'), which always exists."""
    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setattr(life.os, "access", lambda path, mode: asked.append(Path(path)) or True)
    Home.at(Path("h"), runs=Path("a/b")).check_runs_writable()
    assert asked == [Path(".")]


def test_a_new_run_starts_from_the_deployed_model_else_the_warmup_else_none(tmp_path):
    home = Home.at(tmp_path, said={"warmup": "EDGE_SEL_CHECKPOINT"})
    home.deployed.mkdir(parents=True)                     # a deployed directory without weights: not a model
    home.warmup.mkdir(parents=True)
    (home.warmup / "model.safetensors").mkdir()           # not a file either
    with pytest.raises(InputError) as e:
        home.start_checkpoint()
    assert str(e.value) == (f"EDGE_SEL_CHECKPOINT {home.warmup}: no checkpoint there (model.safetensors is "
                            f"missing), and nothing is deployed at --deployed {home.deployed}")
    (home.warmup / "model.safetensors").rmdir()
    (home.warmup / "model.safetensors").write_text("w")
    assert home.start_checkpoint() == home.warmup
    (home.deployed / "model.safetensors").write_text("d")
    assert home.start_checkpoint() == home.deployed
    (home.warmup / "model.safetensors").unlink()
    assert home.start_checkpoint() == home.deployed


def test_a_result_is_promoted_only_by_a_decision_that_says_so(tmp_path):
    cut = NightResult(tmp_path, {}, None, 130)
    assert not cut.promoted and cut.rule is None and cut.promoted is False
    assert (cut.resumed, cut.start, cut.abandoned, cut.cost) == (False, None, None, {})
    kept = NightResult(tmp_path, {}, Decision(False, "not-better", "no"), 0)
    assert kept.promoted is False and kept.rule == "not-better"
    done = NightResult(tmp_path, {}, Decision(True, "better", "yes"), 0)
    assert done.promoted is True and done.rule == "better"


# ---- which run -------------------------------------------------------------------------------

def test_the_latest_run_is_the_newest_directory_named_by_its_start_time(tmp_path):
    runs = tmp_path / "runs"
    assert life.latest_run(runs) is None
    runs.write_text("")
    assert life.latest_run(runs) is None                  # a file is no runs directory
    runs.unlink()
    runs.mkdir()
    assert life.latest_run(runs) is None
    for name in ("20260102T000000Z", "20260101T000000Z", "20260105T000000Z.abandoned", "x20260106T000000Z",
                 "20260107T000000Zx", "2026010T000000Z", "notes"):
        (runs / name).mkdir()
    (runs / "20260104T000000Z").write_text("")            # a file named like a run
    assert life.latest_run(runs) == runs / "20260102T000000Z"
    assert life.RUN_NAME.fullmatch("20260102T000000Z") and life.ABANDONED == ".abandoned"


@pytest.mark.parametrize("state, summary, cut", [
    (False, None, False),                                   # no state checkpoint: nothing to resume
    ("file", None, False),                                  # a file named state is none either
    (True, None, True),                                     # cut off before its summary
    (True, '{"stop_reason": "interrupt', True),             # a torn summary: the resume decides
    (True, "[1]", True),                                    # JSON but no summary: the resume refuses it
    (True, '"done"', True),
    (True, {"stop_reason": "interrupted"}, True),
    (True, {"stop_reason": "energy_budget"}, False),
    (True, {"stop_reason": None}, False),
    (True, {}, False),
])
def test_a_run_is_unfinished_with_a_state_and_no_summary_or_an_interrupted_one(tmp_path, state, summary, cut):
    run = a_run(tmp_path, "20260101T000000Z", state=state is True, summary=summary)
    if state == "file":
        (run / "state").write_text("")
    assert life.unfinished(run) is cut


def test_a_summary_that_cannot_be_read_leaves_the_run_unfinished(tmp_path):
    run = a_run(tmp_path, "20260101T000000Z")
    (run / "summary.json").mkdir()                        # unreadable (an OSError, not a missing file)
    assert life.unfinished(run) is True


def test_a_run_set_aside_is_renamed_beside_the_others_never_over_one(tmp_path):
    run = a_run(tmp_path, "20260101T000000Z")
    (run / "state" / "x").write_text("kept")
    assert life.set_aside(run) == tmp_path / "20260101T000000Z.abandoned"
    assert (tmp_path / "20260101T000000Z.abandoned" / "state" / "x").read_text() == "kept" and not run.exists()
    for n in (2, 3):
        a_run(tmp_path, "20260101T000000Z")
        assert life.set_aside(run) == tmp_path / f"20260101T000000Z.abandoned.{n}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260101T000000Z.abandoned", "20260101T000000Z.abandoned.2",
                                                          "20260101T000000Z.abandoned.3"]


def test_a_new_run_is_named_by_the_utc_second_and_a_taken_name_moves_on(tmp_path):
    when = datetime.datetime(2026, 3, 4, 23, 59, 58, 999999, tzinfo=datetime.timezone.utc)
    assert life.new_run_name(tmp_path, when) == "20260304T235958Z"
    (tmp_path / "20260304T235958Z").mkdir()
    assert life.new_run_name(tmp_path, when) == "20260304T235959Z"
    (tmp_path / "20260304T235959Z").write_text("")      # any entry takes a name
    assert life.new_run_name(tmp_path, when) == "20260305T000000Z"


def test_a_new_run_is_named_by_utc_not_local_time(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")                # 5:30 from UTC: local time would show
    time.tzset()
    try:
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        name = life.new_run_name(tmp_path)
        after = datetime.datetime.now(datetime.timezone.utc)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    when = datetime.datetime.strptime(name, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    assert before <= when <= after


# ---- three nights of the same failure ---------------------------------------------------------

def test_a_failed_resume_is_counted_night_after_night_the_same_way(tmp_path):
    run = a_run(tmp_path, "20260101T000000Z")
    assert life.RESUME_TRIES == 3 and life.RESUME_FAILURES == "resume-failures.json"
    for n in (1, 2, 3, 4):
        assert life.count_failed_resume(run, RuntimeError("state mismatch")) == n
    assert json.loads((run / "resume-failures.json").read_text()) == {"error": "RuntimeError: state mismatch",
                                                                     "count": 4}
    # Another error starts again; so does the same message from another kind of error.
    assert life.count_failed_resume(run, RuntimeError("other")) == 1
    assert life.count_failed_resume(run, ValueError("other")) == 1
    assert json.loads((run / "resume-failures.json").read_text()) == {"error": "ValueError: other", "count": 1}


def test_an_error_is_compared_by_its_first_200_characters(tmp_path):
    run = a_run(tmp_path, "20260101T000000Z")
    assert life.count_failed_resume(run, RuntimeError("x" * 200 + "1")) == 1
    assert life.count_failed_resume(run, RuntimeError("x" * 200 + "2")) == 2
    assert json.loads((run / "resume-failures.json").read_text())["error"] == "RuntimeError: " + "x" * 200
    assert life.count_failed_resume(run, RuntimeError("x" * 199 + "y")) == 1


@pytest.mark.parametrize("text", ["not json", '{"error": "RuntimeError: e"}', '{"error": "RuntimeError: e", "count": '
                                  'null}', '{"error": "RuntimeError: e", "count": "two"}'],
                         ids=["torn", "no-count", "null-count", "text-count"])
def test_a_damaged_count_starts_again(tmp_path, text):
    """Each caught error (ValueError, KeyError, TypeError) is one case: a mutant that left one out
    passed before."""
    run = a_run(tmp_path, "20260101T000000Z")
    (run / "resume-failures.json").write_text(text)
    assert life.count_failed_resume(run, RuntimeError("e")) == 1
    assert json.loads((run / "resume-failures.json").read_text()) == {"error": "RuntimeError: e", "count": 1}


def test_a_count_that_cannot_be_written_does_not_grow(tmp_path, monkeypatch):
    run = a_run(tmp_path, "20260101T000000Z")
    (run / "resume-failures.json").write_text('{"error": "RuntimeError: e", "count": 1}')

    def full(path, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(life, "atomic_write_bytes", full)
    assert [life.count_failed_resume(run, RuntimeError("e")) for _ in range(3)] == [2, 2, 2]
    (run / "resume-failures.json").unlink()
    (run / "resume-failures.json").mkdir()                # unreadable too
    assert life.count_failed_resume(run, RuntimeError("e")) == 1


# ---- what tonight's options change -------------------------------------------------------------

def saved_config(**changes) -> dict:
    """A run's config.json as the run writes it: its options and its data."""
    return {**TrainConfig().to_json(), "data": dataclasses.asdict(TONIGHT), "phase": "finetune", **changes}


def test_nothing_is_said_when_tonights_options_are_the_runs(tmp_path):
    """A mutant that added ' ()' (or any text) to a journal line with nothing to say passed before."""
    run = a_run(tmp_path, "20260101T000000Z", config=saved_config())
    assert life.set_aside_said(run, TrainConfig(), TONIGHT) == ""


@pytest.mark.parametrize("config", [None, "not json", "[1, 2]"], ids=["missing", "torn", "not-a-mapping"])
def test_nothing_is_said_without_a_readable_configuration(tmp_path, config):
    run = a_run(tmp_path, "20260101T000000Z", config=config)
    assert life.set_aside_said(run, TrainConfig(epochs=3), TONIGHT) == ""


def test_tonights_options_that_differ_from_the_resumed_runs_are_named(tmp_path):
    saved = saved_config(epochs=2, lr=0.05, batch_size="64", explicit=["epochs"], method={"gate": "x"},
                         bn_conditions=4, data={**dataclasses.asdict(TONIGHT), "subset": 200, "subset_seed": 7,
                                                "val_fraction": 0.1})
    del saved["seed"]                                   # an option the run never kept
    run = a_run(tmp_path, "20260101T000000Z", config=saved)
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=64, explicit=["lr"], method={"gate": "y"}, bn_conditions=0,
                      seed=9, memory_format="auto")
    data = dataclasses.replace(TONIGHT, subset_seed=3, split_seed=0)
    assert life.set_aside_said(run, cfg, data) == " (--epochs 3, not 2; --subset 300, not 200)"
    assert life.set_aside_said(run, TrainConfig(), TONIGHT) == (" (--epochs 5, not 2; --batch-size 128, not 64; "
                                                                "--subset 300, not 200)")


def test_auto_is_the_runs_own_choice_and_never_named(tmp_path):
    run = a_run(tmp_path, "20260101T000000Z", config=saved_config(memory_format="channels_last", precision="bf16",
                                                                    eval_batch_size=128))
    said = life.set_aside_said(run, TrainConfig(memory_format="auto", precision="fp32", eval_batch_size=256), TONIGHT)
    assert said == " (--precision fp32, not bf16; --eval-batch-size 256, not 128)"


def test_only_the_settings_given_are_named_and_a_measured_batch_never(tmp_path):
    """The command line passes the settings the user gave: defaults nobody chose are not 'set aside'
    (a resumed night said '--eval-batch-size 0, not 128' where neither had been set); 0, 'measure
    it', is the run's own choice like 'auto'."""
    run = a_run(tmp_path, "20260101T000000Z", config=saved_config(epochs=2, batch_size=64, eval_batch_size=128))
    assert life.set_aside_said(run, TrainConfig(), TONIGHT) == " (--epochs 5, not 2; --batch-size 128, not 64)"
    assert life.set_aside_said(run, TrainConfig(), TONIGHT, given={"epochs"}) == " (--epochs 5, not 2)"
    assert life.set_aside_said(run, TrainConfig(epochs=2), TONIGHT, given={"epochs", "subset"}) == ""
    assert life.set_aside_said(run, TrainConfig(eval_batch_size=256), TONIGHT, given={"eval_batch_size"}) == \
        " (--eval-batch-size 256, not 128)"


def test_the_data_compared_whole_when_the_saved_data_is_not_a_mapping(tmp_path):
    """A config.json whose data is not a mapping (damaged by hand): the night says so and goes on
    to the resume, which refuses it as bad input; it used to stop every night on AttributeError."""
    run = a_run(tmp_path, "20260101T000000Z", config=saved_config(data=None))
    said = life.set_aside_said(run, TrainConfig(), TONIGHT)
    assert said == f" (--data {dataclasses.asdict(TONIGHT)}, not None)"


# ---- a damaged deployed model or bank ----------------------------------------------------------

def versions(tmp_path: Path, *names: str) -> tuple[Path, list[Path]]:
    made = []
    for name in names:
        v = tmp_path / "checkpoints" / ".deployed.versions" / name
        v.mkdir(parents=True)
        (v / "model.safetensors").write_text(name)
        made.append(v)
    deployed = tmp_path / "checkpoints" / "deployed"
    deployed.symlink_to(Path(".deployed.versions") / names[0])
    return deployed, made


def loads_except(monkeypatch, *bad: Path):
    """load_error as a stand-in: the directories in `bad` do not load."""
    asked = []

    def load_error(path, with_bank=True):
        asked.append(Path(path) if with_bank else ("model only", Path(path)))
        return f"{Path(path).name}: damaged" if Path(path).resolve() in [b.resolve() for b in bad] else None
    monkeypatch.setattr(life, "load_error", load_error)
    return asked


def test_a_damaged_deployed_model_gives_way_to_the_newest_version_that_loads(tmp_path, monkeypatch):
    home = Home.at(tmp_path)
    deployed, made = versions(tmp_path, "20260103T000000Z-c", "20260104T000000Z-d", "20260102T000000Z-b",
                              "20260101T000000Z-a")
    asked = loads_except(monkeypatch, made[0], made[1])
    lines = []
    life.roll_back_damaged_deployed(home, lines.append)
    assert deployed.resolve() == made[2]
    assert (made[0].parent / ("20260103T000000Z-c" + deployed_swap.DAMAGED)).is_dir() and not made[0].exists()
    assert asked == [deployed, made[1], made[2]]          # newest first, stopping at the first that loads
    assert lines == [f"{NIGHTLY}the deployed model does not load (deployed: damaged); set aside, the version "
                     f"before it is deployed again (20260102T000000Z-b)"]


def test_with_no_version_that_loads_the_warmup_serves(tmp_path, monkeypatch):
    home = Home.at(tmp_path)
    deployed, made = versions(tmp_path, "20260102T000000Z-b", "20260101T000000Z-a")
    asked = loads_except(monkeypatch, *made)
    lines = []
    life.roll_back_damaged_deployed(home, lines.append)
    # Every version found not to load is set aside: no later repair deploys it again (issue 45, item 9).
    assert not os.path.lexists(deployed) and not made[0].exists() and not made[1].exists()
    assert all(v.with_name(v.name + deployed_swap.DAMAGED).is_dir() for v in made)
    assert asked == [deployed, made[1], ("model only", home.warmup)]     # its bank is set aside when it starts
    assert lines == [f"{NIGHTLY}the deployed model does not load (deployed: damaged); set aside, the warmup serves"]
    deployed_swap.recover(deployed)                     # the next night's repair, and promote's
    assert not os.path.lexists(deployed)
    (line,) = journal.read(deployed)
    assert (line["event"], line["version"], line["previous"], line["by"]) == ("rolled-back", None, str(made[0]), "night")


def test_when_nothing_loads_the_fault_is_not_the_versions_and_nothing_changes(tmp_path, monkeypatch):
    home = Home.at(tmp_path)
    deployed, made = versions(tmp_path, "20260102T000000Z-b", "20260101T000000Z-a")
    asked = loads_except(monkeypatch, *made, home.warmup)
    lines = []
    life.roll_back_damaged_deployed(home, lines.append)
    assert deployed.resolve() == made[0] and made[1].is_dir() and lines == []
    assert asked == [deployed, made[1], ("model only", home.warmup)]


def test_a_deployed_model_that_loads_or_is_no_link_is_left_alone(tmp_path, monkeypatch):
    home = Home.at(tmp_path)
    lines = []
    asked = loads_except(monkeypatch, home.deployed)
    home.deployed.mkdir(parents=True)                      # a plain directory: nothing to roll back to
    life.roll_back_damaged_deployed(home, lines.append)
    home.deployed.rmdir()
    home.deployed.symlink_to("nowhere")                    # a dangling link: recover's business
    life.roll_back_damaged_deployed(home, lines.append)
    assert asked == [] and lines == []
    home.deployed.unlink()
    deployed, made = versions(tmp_path, "20260102T000000Z-b", "20260101T000000Z-a")
    asked = loads_except(monkeypatch)
    life.roll_back_damaged_deployed(home, lines.append)
    assert asked == [deployed] and deployed.resolve() == made[0] and lines == []


def test_a_roll_back_that_cannot_be_written_is_a_write_error(tmp_path, monkeypatch):
    home = Home.at(tmp_path)
    deployed, made = versions(tmp_path, "20260102T000000Z-b", "20260101T000000Z-a")
    loads_except(monkeypatch, made[0])
    for error, why in ((OSError(30, "Read-only file system"), "Read-only file system"), (OSError("gone"), "gone")):
        def refuse(*a, error=error):
            raise error
        monkeypatch.setattr(deployed_swap, "roll_back", refuse)
        with pytest.raises(WriteError) as e:
            life.roll_back_damaged_deployed(home, print)
        assert str(e.value) == f"--deployed {deployed}: cannot roll back a damaged model ({why})"
        assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_checkpoint_that_does_not_load_says_why(tmp_path, monkeypatch):
    import edge_sel.core.bn_bank as bank
    import edge_sel.models
    seen, banks = [], []
    model, card = object(), SimpleNamespace(input_shape=(1, 8, 8))

    def load(path):
        seen.append(path)
        if Path(path).name == "bad":
            raise InputError("bad/model.json: unreadable")
        if Path(path).name == "broken":
            raise RuntimeError("not bad input")
        return model, card

    def read_bank(directory, input_shape, m):
        banks.append((directory, input_shape, m))
        if directory.name == "torn-bank":
            raise InputError("torn-bank/bn_bank.safetensors: unreadable or corrupt")
    monkeypatch.setattr(edge_sel.models, "load_checkpoint", load)
    monkeypatch.setattr(bank, "read_bank", read_bank)
    assert life.load_error(tmp_path / "bad") == "bad/model.json: unreadable"
    assert life.load_error(tmp_path / "good") is None
    with pytest.raises(RuntimeError):
        life.load_error(tmp_path / "broken")
    assert seen[:3] == [tmp_path / "bad", tmp_path / "good", tmp_path / "broken"]
    assert banks == [(tmp_path / "good", [1, 8, 8], model)]
    # A model whose bank does not read serves as another model than the one judged: it does not load.
    assert life.load_error(str(tmp_path / "torn-bank")) == "torn-bank/bn_bank.safetensors: unreadable or corrupt"
    assert life.load_error(tmp_path / "torn-bank", with_bank=False) is None
    assert banks[1:] == [(tmp_path / "torn-bank", [1, 8, 8], model)]


def fake_checkpoint(monkeypatch, model=None):
    import edge_sel.models
    card = SimpleNamespace(input_shape=(1, 8, 8))
    model = model if model is not None else nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    loaded = []
    monkeypatch.setattr(edge_sel.models, "load_checkpoint", lambda path: loaded.append(path) or (model, card))
    return model, loaded


def test_a_damaged_bank_is_set_aside_and_the_model_serves_without_it(tmp_path, monkeypatch):
    import edge_sel.core.bn_bank as bank
    model, loaded = fake_checkpoint(monkeypatch)
    read = []

    def read_bank(directory, input_shape, m):
        read.append((directory, input_shape, m))
        if (directory / bank.BANK_FILE).read_text() == "damaged":
            raise InputError("bn_bank.safetensors: condition 0 has no layers")
        return []
    monkeypatch.setattr(bank, "read_bank", read_bank)
    lines = []
    life.set_aside_damaged_bank(tmp_path, lines.append)            # no bank: nothing is loaded
    assert loaded == [] and read == [] and lines == []
    (tmp_path / bank.BANK_FILE).write_text("fine")
    life.set_aside_damaged_bank(tmp_path, lines.append)
    assert read == [(tmp_path, [1, 8, 8], model)] and lines == [] and (tmp_path / bank.BANK_FILE).is_file()
    (tmp_path / bank.BANK_FILE).write_text("damaged")
    life.set_aside_damaged_bank(tmp_path, lines.append)
    assert not (tmp_path / bank.BANK_FILE).exists()
    assert (tmp_path / "bn_bank.safetensors.damaged").read_text() == "damaged"
    assert lines == [f"{NIGHTLY}bn_bank.safetensors: condition 0 has no layers; set aside as "
                     f"bn_bank.safetensors.damaged: the model serves with its own statistics and tonight starts "
                     f"a new bank"]
    assert loaded == [tmp_path] * 2


def test_a_bank_directory_is_no_bank(tmp_path, monkeypatch):
    import edge_sel.core.bn_bank as bank
    _, loaded = fake_checkpoint(monkeypatch)
    (tmp_path / bank.BANK_FILE).mkdir()
    life.set_aside_damaged_bank(tmp_path, print)
    assert loaded == []


def with_source_memory(path: Path, files=SOURCE_FILES) -> Path:
    path.mkdir(exist_ok=True)
    for name in files:
        (path / name).write_text("")
    return path


def test_the_night_keeps_statistics_per_condition_for_a_start_with_source_memory_and_batchnorm(tmp_path,
                                                                                               monkeypatch):
    _, loaded = fake_checkpoint(monkeypatch)
    start = tmp_path / "start"
    with_source_memory(start, SOURCE_FILES[:2])
    assert life.conditions_for(start, "torch") == 0 and loaded == []       # two of three files: none
    with_source_memory(start)
    assert NIGHT_BN_CONDITIONS == 4
    assert life.conditions_for(start, "torch") == 4 and loaded == [start]
    assert life.conditions_for(start, "ort") == 0 and loaded == [start]    # ORT artifacts keep their own


@pytest.mark.parametrize("layers, kept", [
    ([nn.Conv2d(1, 2, 3)], 0),                                               # no BatchNorm
    ([nn.BatchNorm2d(2, track_running_stats=False)], 0),
    ([nn.BatchNorm2d(2), nn.BatchNorm2d(2, track_running_stats=False)], 0),
    ([nn.BatchNorm2d(2, track_running_stats=False), nn.BatchNorm2d(2)], 0),
    ([nn.BatchNorm1d(2), nn.BatchNorm2d(2)], NIGHT_BN_CONDITIONS),
])
def test_statistics_per_condition_need_every_batchnorm_layer_to_keep_running_ones(tmp_path, monkeypatch, layers,
                                                                                 kept):
    fake_checkpoint(monkeypatch, nn.Sequential(*layers))
    assert life.conditions_for(with_source_memory(tmp_path / "start"), "torch") == kept


def test_an_interrupted_swap_is_repaired_and_a_failed_repair_is_a_write_error(tmp_path, monkeypatch):
    repaired = []
    monkeypatch.setattr(pr, "recover", repaired.append)
    life.repair_deployed(tmp_path / "deployed")
    assert repaired == [tmp_path / "deployed"]
    for error, why in ((OSError(13, "Permission denied"), "Permission denied"), (OSError("busy"), "busy")):
        def refuse(path, error=error):
            raise error
        monkeypatch.setattr(pr, "recover", refuse)
        with pytest.raises(WriteError) as e:
            life.repair_deployed(tmp_path / "deployed")
        assert str(e.value) == f"--deployed {tmp_path / 'deployed'}: cannot repair an interrupted swap ({why})"
        assert e.value.__cause__ is None and e.value.__suppress_context__


# ---- the night's cost ---------------------------------------------------------------------------

NOTE = "counted FLOPs of the passes run; joules from the run's meter windows and promote's own window"


def test_the_nights_cost_is_the_runs_totals_plus_the_deployed_models_validation():
    totals = {"flops_all": 1000, "energy_all_j": 12.5, "wall_all_s": 30.0, "flops_train": 700, "flops_eval": 300,
              "energy_source": "rapl", "energy_method": "measured"}
    judged = {"samples": 64, "flops": 50, "wall_s": 1.5, "energy_j": 0.75, "energy_source": "rapl"}
    cost = life.night_cost({"totals": totals}, Decision(False, "not-better", "", evaluation=judged))
    assert cost == {
        "flops_all": 1050, "energy_all_j": 13.25, "wall_all_s": 31.5,
        "run": {"flops_all": 1000, "energy_all_j": 12.5, "wall_all_s": 30.0, "flops_train": 700, "flops_eval": 300},
        "promote": {"samples": 64, "flops": 50, "wall_s": 1.5, "energy_j": 0.75},
        "energy_source": "rapl", "energy_method": "measured", "note": NOTE,
    }
    # promote's joules were metered over the whole check (data read and shifted, model loaded), so
    # the night's seconds take its whole time, not the validation passes' alone.
    checked = Decision(False, "not-better", "", evaluation={**judged, "total_s": 6.0})
    whole = life.night_cost({"totals": totals}, checked)
    assert whole["wall_all_s"] == 36.0 and whole["promote"]["total_s"] == 6.0 and whole["promote"]["wall_s"] == 1.5


def test_a_night_not_judged_costs_what_its_run_did():
    totals = {"flops_all": 1000, "energy_all_j": 12.5, "wall_all_s": 30.0}
    cost = life.night_cost({"totals": totals}, None)
    assert (cost["flops_all"], cost["energy_all_j"], cost["wall_all_s"]) == (1000, 12.5, 30.0)
    assert cost["promote"] == {"samples": None, "flops": None, "wall_s": None, "energy_j": None}
    assert cost["run"] == {**totals, "flops_train": None, "flops_eval": None}
    assert life.night_cost({"totals": totals}, Decision(True, "first", "")) == cost      # nothing validated


def test_missing_figures_count_as_zero_and_joules_stay_unknown_only_when_neither_was_metered():
    nothing = life.night_cost({}, None)
    assert (nothing["flops_all"], nothing["energy_all_j"], nothing["wall_all_s"]) == (0, None, 0)
    assert nothing["energy_source"] is None and nothing["energy_method"] is None and nothing["note"] == NOTE
    assert life.night_cost({"totals": None}, None) == nothing
    judged = Decision(False, "not-better", "", evaluation={"flops": 7, "wall_s": 2.0, "energy_j": 0.5})
    only_promote = life.night_cost({"totals": {"flops_all": None}}, judged)
    assert (only_promote["flops_all"], only_promote["energy_all_j"], only_promote["wall_all_s"]) == (7, 0.5, 2.0)
    only_run = life.night_cost({"totals": {"energy_all_j": 3.0}}, Decision(True, "first", "", evaluation={
        "energy_j": None}))
    assert only_run["energy_all_j"] == 3.0
    zero = life.night_cost({"totals": {"energy_all_j": 0.0}}, None)
    assert zero["energy_all_j"] == 0.0 and zero["energy_all_j"] is not None


# ---- promote's validation inside its own meter window -----------------------------------------

@dataclasses.dataclass
class FakeEnergy(EnergyOptions):
    """Energy options whose meter is a recorder: the window's joules are given."""
    window: dict = dataclasses.field(default_factory=dict)
    log: list = dataclasses.field(default_factory=list)

    def open(self, gpu_uuids=None):
        self.log.append(("open", self.idle_baseline_s, self.interval_s))
        return FakeMeter(self.log, self.window)


class FakeMeter:
    def __init__(self, log, window):
        self.log, self.window = log, window

    def begin(self, name):
        self.log.append(("begin", name))

    def end(self, name):
        self.log.append(("end", name))
        return self.window

    def close(self):
        self.log.append(("close",))


def test_promotes_validation_is_metered_in_a_window_of_its_own_without_idle_power(tmp_path, monkeypatch):
    """A mutant that kept the fine-tune's idle baseline (measured again per validation) passed before."""
    seen = []

    def validate(config, deployed, run_dir):
        seen.append((config, deployed, run_dir))
        energy.log.append(("validate",))
        return 0.875, 0.5, {"samples": 64, "flops": 50, "energy": {"energy_j": 9.0}, "wall_s": 1.0}
    monkeypatch.setattr(life, "validate_deployed", validate)
    energy = FakeEnergy(idle_baseline_s=5.0, interval_s=0.25,
                        window={"energy_j": 0.75, "energy_source": "rapl", "energy_method": "measured", "other": 1})
    evaluate = life.metered_validation(energy)
    acc, anchor, cost = evaluate({"k": 1}, tmp_path / "deployed", tmp_path / "run")
    assert (acc, anchor) == (0.875, 0.5)
    assert cost == {"samples": 64, "flops": 50, "wall_s": 1.0, "energy_j": 0.75, "energy_source": "rapl",
                    "energy_method": "measured"}
    assert energy.log == [("open", 0.0, 0.25), ("begin", "promote"), ("validate",), ("end", "promote"), ("close",)]
    assert energy.idle_baseline_s == 5.0                  # the fine-tune's options are not changed
    assert seen == [({"k": 1}, tmp_path / "deployed", tmp_path / "run")]
    energy.log.clear()
    energy.window = {}
    _, _, cost = evaluate({}, tmp_path / "deployed")
    assert seen[-1] == ({}, tmp_path / "deployed", None)
    assert cost == {"samples": 64, "flops": 50, "wall_s": 1.0, "energy_j": None, "energy_source": None,
                    "energy_method": None}


def test_a_validation_cost_without_its_own_energy_entry_is_taken_as_is(tmp_path, monkeypatch):
    """A mutant that popped 'energy' without a default (a KeyError here) passed before."""
    monkeypatch.setattr(life, "validate_deployed", lambda config, deployed, run_dir: (0.5, None, {"flops": 3}))
    energy = FakeEnergy(window={"energy_j": 0.25})
    assert life.metered_validation(energy)({}, tmp_path) == (0.5, None, {"flops": 3, "energy_j": 0.25,
                                                                         "energy_source": None,
                                                                         "energy_method": None})


def test_the_journals_lines_are_flushed_as_they_are_said(monkeypatch):
    """The journal (a pipe under systemd) shows each line at once. Mutants that dropped flush=True
    passed before."""
    printed = []
    monkeypatch.setattr(life, "print", lambda *a, **k: printed.append((a, k)), raising=False)
    life._print("a line")
    life._silent("nothing")
    assert printed == [(("a line",), {"flush": True})]


def test_the_meter_is_closed_when_the_validation_fails(tmp_path, monkeypatch):
    def validate(config, deployed, run_dir):
        raise InputError("the deployed model does not load")
    monkeypatch.setattr(life, "validate_deployed", validate)
    energy = FakeEnergy()
    with pytest.raises(InputError):
        life.metered_validation(energy)({}, tmp_path)
    assert energy.log == [("open", 0.0, 0.1), ("begin", "promote"), ("close",)]


# ---- a whole night, with the engine stood in for ------------------------------------------------

def test_a_first_night_fine_tunes_the_warmup_and_is_judged(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    engine = Engine(monkeypatch, summary={"stop_reason": "completed", "totals": {"flops_all": 10, "energy_all_j": 2.0}})
    lines, closing = [], []
    cfg = TrainConfig(epochs=2, bn_conditions=0)
    energy = EnergyOptions(interval_s=0.5)
    result = life.night(home, TONIGHT, cfg, energy, {"name": "generic"}, run_name="tonight", say=lines.append,
                        trained=closing.append)
    run_dir = home.runs / "tonight"
    (name, start, data, used, out, kw), promoted = engine.calls
    assert (name, start, data, out) == ("finetune", home.warmup, TONIGHT, run_dir)
    assert kw == {"quiet": False, "energy": energy, "profile": {"name": "generic"}}
    assert kw["energy"] is not energy and used is not cfg and used.epochs == 2      # copies
    assert promoted[:3] == ("promote", run_dir, home.deployed) and callable(promoted[3])
    assert lines == [f"{NIGHTLY}new run {run_dir} from {home.warmup}"]
    assert closing == [engine.summary]
    assert result == NightResult(run_dir, engine.summary, engine.decision, 0, False, home.warmup, None,
                                 life.night_cost(engine.summary, engine.decision))
    assert result.cost["flops_all"] == 10 and result.cost["energy_all_j"] == 2.0


def test_a_night_is_named_by_the_utc_start_and_starts_from_the_deployed_model(tmp_path, monkeypatch):
    home = a_home(tmp_path, deployed=True)
    engine = Engine(monkeypatch)
    monkeypatch.setattr(life, "new_run_name", lambda runs: f"named-under-{runs.name}")
    result = life.night(home, TONIGHT, TrainConfig(bn_conditions=0), quiet=True)
    assert engine.calls[0][1] == home.deployed and engine.calls[0][4] == home.runs / "named-under-runs"
    assert engine.calls[0][5]["quiet"] is True and engine.calls[0][5]["energy"] == EnergyOptions()
    assert result.start == home.deployed and result.run_dir == home.runs / "named-under-runs"


def test_the_journal_goes_to_stdout_unless_quiet(tmp_path, monkeypatch, capsys):
    home = a_home(tmp_path)
    Engine(monkeypatch)
    life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="a")
    assert capsys.readouterr().out == f"{NIGHTLY}new run {home.runs / 'a'} from {home.warmup}\n"
    life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="b", quiet=True)
    assert capsys.readouterr().out == ""
    lines = []
    life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="c", quiet=True, say=lines.append)
    assert capsys.readouterr().out == "" and lines == [f"{NIGHTLY}new run {home.runs / 'c'} from {home.warmup}"]


@pytest.mark.parametrize("name", ["", "a/b", "../x", "20260101T000000Z.abandoned"])
def test_a_run_name_must_be_a_plain_directory_name(tmp_path, monkeypatch, name):
    home = a_home(tmp_path)
    engine = Engine(monkeypatch)
    with pytest.raises(InputError) as e:
        life.night(home, TONIGHT, TrainConfig(), run_name=name, quiet=True)
    assert str(e.value) == f"run name {name!r}: must be a plain directory name"
    assert engine.calls == [] and not home.runs.exists()


def test_the_night_keeps_statistics_per_condition_when_not_told_and_not_with_bn_adapt(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    engine = Engine(monkeypatch, conditions=4)
    cfg = TrainConfig(bn_conditions=None)
    life.night(home, TONIGHT, cfg, run_name="a", quiet=True)
    assert engine.calls[0] == ("conditions_for", home.warmup, "torch") and engine.calls[1][3].bn_conditions == 4
    assert cfg.bn_conditions is None                       # the caller's options are not changed
    engine.calls.clear()
    lines = []
    life.night(home, TONIGHT, TrainConfig(bn_conditions=None, bn_adapt=200), run_name="b", say=lines.append)
    assert engine.calls[1][3].bn_conditions == 0
    assert lines == [f"{NIGHTLY}BatchNorm statistics per condition are off tonight: --bn-adapt 200 re-estimates "
                     f"one set instead", f"{NIGHTLY}new run {home.runs / 'b'} from {home.warmup}"]
    engine.calls.clear()
    engine.conditions = 0                                   # none can be kept: bn-adapt stays, nothing said
    lines.clear()
    life.night(home, TONIGHT, TrainConfig(bn_conditions=None, bn_adapt=200), run_name="c", say=lines.append)
    assert engine.calls[1][3].bn_conditions == 0 and engine.calls[1][3].bn_adapt == 200 and len(lines) == 1
    engine.calls.clear()
    life.night(home, TONIGHT, TrainConfig(bn_conditions=2), run_name="d", quiet=True)    # told: kept
    assert engine.names() == ["finetune", "promote"] and engine.calls[0][3].bn_conditions == 2


@pytest.mark.parametrize("stop_signal, status", [("SIGTERM", 143), ("SIGINT", 130), (None, 130), ("", 130)])
def test_a_night_stopped_by_a_signal_is_not_judged_and_exits_as_the_shell_would(tmp_path, monkeypatch,
                                                                                stop_signal, status):
    home = a_home(tmp_path)
    summary = {"stop_reason": "interrupted", "totals": {"flops_all": 5}}
    if stop_signal is not None:
        summary["stop_signal"] = stop_signal
    engine = Engine(monkeypatch, summary=summary)
    closing = []
    result = life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="a", quiet=True,
                        trained=closing.append)
    assert engine.names() == ["finetune"] and closing == [summary]
    assert result == NightResult(home.runs / "a", summary, None, status, False, home.warmup, None,
                                 life.night_cost(summary, None))
    assert result.cost["flops_all"] == 5


def test_a_cut_off_run_is_resumed_and_judged_with_tonights_options_set_aside(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    a_run(home.runs, "20260101T000000Z", summary={"stop_reason": "done"})
    cut = a_run(home.runs, "20260102T000000Z", config=saved_config(epochs=2))
    resumed = {"stop_reason": "completed", "totals": {"flops_all": 99}}
    engine = Engine(monkeypatch, resumed=resumed)
    lines, closing = [], []
    result = life.night(home, TONIGHT, TrainConfig(epochs=3, bn_conditions=0), say=lines.append,
                        trained=closing.append)
    assert engine.calls[0] == ("resume", cut, False, "finetune") and engine.names() == ["resume", "promote"]
    assert engine.calls[1][1:3] == (cut, home.deployed)
    assert lines == [f"{NIGHTLY}resuming {cut} with the options and data it started with (its config.json); "
                     f"tonight's are set aside (--epochs 3, not 2)"]
    assert closing == [resumed]
    assert result == NightResult(cut, resumed, engine.decision, 0, True, None, None,
                                 life.night_cost(resumed, engine.decision))
    engine.calls.clear()
    (cut / "summary.json").write_text(json.dumps(resumed))     # finished now: tomorrow starts a new run
    life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="next", quiet=True)
    assert engine.names() == ["finetune", "promote"]


def test_a_run_refused_as_bad_input_is_set_aside_and_a_new_run_starts(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    stuck = a_run(home.runs, "20260101T000000Z")
    engine = Engine(monkeypatch, resumed=InputError("config.json: unreadable run configuration"))
    lines = []
    result = life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="new", quiet=True,
                        say=lines.append)
    kept = home.runs / "20260101T000000Z.abandoned"
    assert engine.names() == ["resume", "finetune", "promote"] and engine.calls[0][2] is True
    assert lines[1:] == [f"{NIGHTLY}{stuck} cannot be resumed (config.json: unreadable run configuration); kept as "
                         f"{kept}, starting a new run", f"{NIGHTLY}new run {home.runs / 'new'} from {home.warmup}"]
    assert result.abandoned == kept and kept.is_dir() and not stuck.exists() and not result.resumed
    assert result.run_dir == home.runs / "new" and result.start == home.warmup and result.exit_status == 0
    assert not (kept / life.RESUME_FAILURES).exists()       # bad input is not counted: it is set aside at once


def test_a_write_error_while_resuming_keeps_the_run_and_is_not_counted(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    stuck = a_run(home.runs, "20260101T000000Z")
    engine = Engine(monkeypatch, resumed=WriteError("disk full"))
    for _ in range(life.RESUME_TRIES + 1):
        with pytest.raises(WriteError, match="disk full"):
            life.night(home, TONIGHT, TrainConfig(bn_conditions=0), quiet=True)
    assert stuck.is_dir() and not (stuck / life.RESUME_FAILURES).exists()
    assert engine.names() == ["resume"] * 4


def test_a_run_failing_to_resume_the_same_way_is_set_aside_on_the_third_night(tmp_path, monkeypatch):
    """Night 1 and 2 raise (the next night tries again); night 3 sets the run aside and starts a new
    one. A mutant that set it aside a night early or late passed before."""
    home = a_home(tmp_path)
    stuck = a_run(home.runs, "20260101T000000Z")
    engine = Engine(monkeypatch, resumed=RuntimeError("state cannot be applied"))
    for n in (1, 2):
        lines = []
        with pytest.raises(RuntimeError, match="state cannot be applied"):
            life.night(home, TONIGHT, TrainConfig(bn_conditions=0), quiet=True, say=lines.append)
        assert stuck.is_dir() and len(lines) == 2
        assert lines[1] == (f"{NIGHTLY}resuming {stuck} failed (RuntimeError: state cannot be applied); try {n} of 3, "
                            f"the next night tries again")
    lines = []
    result = life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="new", quiet=True, say=lines.append)
    kept = home.runs / "20260101T000000Z.abandoned"
    assert lines[1:] == [f"{NIGHTLY}resuming {stuck} failed 3 nights running (RuntimeError: state cannot be "
                         f"applied); kept as {kept}, starting a new run",
                         f"{NIGHTLY}new run {home.runs / 'new'} from {home.warmup}"]
    assert result.abandoned == kept and not stuck.exists() and result.exit_status == 0 and not result.resumed
    assert json.loads((kept / life.RESUME_FAILURES).read_text()) == {"error": "RuntimeError: state cannot be applied",
                                                                     "count": 3}
    assert engine.names() == ["resume", "resume", "resume", "finetune", "promote"]


def test_what_serves_is_settled_before_the_run_is_chosen(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    order = []
    monkeypatch.setattr(life, "repair_deployed", lambda deployed: order.append(("repair", deployed)))
    monkeypatch.setattr(life, "roll_back_damaged_deployed", lambda h, say: order.append(("roll back", h)))
    monkeypatch.setattr(life, "latest_run", lambda runs: order.append(("latest", runs)))
    monkeypatch.setattr(life, "set_aside_damaged_bank", lambda start, say: order.append(("bank", start)))
    Engine(monkeypatch)
    life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="a", quiet=True)
    assert order == [("repair", home.deployed), ("roll back", home), ("latest", home.runs), ("bank", home.warmup)]


def test_a_night_refused_for_its_runs_place_touches_nothing(tmp_path, monkeypatch):
    home = Home.at(tmp_path / "home", runs=tmp_path / "file" / "runs")
    (tmp_path / "file").write_text("")
    engine = Engine(monkeypatch)
    with pytest.raises(InputError, match="is not a directory"):
        life.night(home, TONIGHT, TrainConfig(bn_conditions=0), quiet=True)
    assert engine.calls == []


def test_the_callers_options_are_copied_whole_and_the_quiet_flag_reaches_their_preparation(tmp_path, monkeypatch):
    """A run may change its options' lists and mappings; the caller's stay as given. Mutants that
    copied them shallowly, or prepared them without `quiet` (ORT artifacts' optimizer is said
    there), passed before."""
    home = a_home(tmp_path)
    engine = Engine(monkeypatch)
    prepared = []
    real = life.prepare_finetune_config
    monkeypatch.setattr(life, "prepare_finetune_config",
                        lambda cfg, quiet=False: prepared.append(quiet) or real(cfg, quiet))
    cfg = TrainConfig(bn_conditions=0, method={"target": 0.2}, explicit=["epochs"])
    energy = EnergyOptions(meters=["cpu"])
    for quiet in (True, False):
        life.night(home, TONIGHT, cfg, energy, run_name=f"q{quiet}", quiet=quiet, say=[].append)
    assert prepared == [True, False]
    for call in engine.calls[::2]:
        used, kw = call[3], call[5]
        used.method["changed"] = 1
        used.explicit.append("changed")
        kw["energy"].meters.append("changed")
    assert cfg.method == {"target": 0.2} and cfg.explicit == ["epochs"] and energy.meters == ["cpu"]


def test_a_damaged_deployed_model_is_rolled_back_before_a_night_starts_from_it(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    deployed, made = versions(tmp_path / "home", "20260102T000000Z-b", "20260101T000000Z-a")
    loads_except(monkeypatch, made[0])
    engine = Engine(monkeypatch)
    lines = []
    result = life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="a", say=lines.append)
    assert lines == [f"{NIGHTLY}the deployed model does not load (deployed: damaged); set aside, the version "
                     f"before it is deployed again (20260101T000000Z-a)",
                     f"{NIGHTLY}new run {home.runs / 'a'} from {home.deployed}"]
    assert result.start == home.deployed and engine.calls[0][1] == home.deployed and deployed.resolve() == made[1]


def test_a_damaged_bank_at_the_start_is_set_aside_and_said_in_the_journal(tmp_path, monkeypatch):
    import edge_sel.core.bn_bank as bank
    home = a_home(tmp_path)
    fake_checkpoint(monkeypatch)

    def read_bank(directory, input_shape, model):
        raise InputError("bn_bank.safetensors: not finite")
    monkeypatch.setattr(bank, "read_bank", read_bank)
    (home.warmup / bank.BANK_FILE).write_text("damaged")
    Engine(monkeypatch)
    lines = []
    life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="a", say=lines.append)
    assert lines[0].startswith(f"{NIGHTLY}bn_bank.safetensors: not finite; set aside as bn_bank.safetensors.damaged")
    assert (home.warmup / "bn_bank.safetensors.damaged").is_file() and len(lines) == 2


def test_a_run_set_aside_is_reported_even_when_tonights_new_run_is_stopped(tmp_path, monkeypatch):
    home = a_home(tmp_path)
    a_run(home.runs, "20260101T000000Z")
    summary = {"stop_reason": "interrupted", "stop_signal": "SIGTERM"}
    Engine(monkeypatch, summary=summary, resumed=InputError("refused"))
    result = life.night(home, TONIGHT, TrainConfig(bn_conditions=0), run_name="new", quiet=True)
    assert result.abandoned == home.runs / "20260101T000000Z.abandoned" and result.exit_status == 143
    assert result.run_dir == home.runs / "new" and result.decision is None


def test_the_nights_cost_includes_promotes_metered_validation(tmp_path, monkeypatch):
    """promote is handed a validation metered with tonight's energy options, and the night's cost
    adds what it counted. Mutants that metered it with no options, or left the decision out of the
    cost, passed before."""
    home = a_home(tmp_path)
    engine = Engine(monkeypatch, summary={"stop_reason": "completed",
                                          "totals": {"flops_all": 100, "energy_all_j": 2.0, "wall_all_s": 10.0}})
    monkeypatch.setattr(life, "validate_deployed",
                        lambda config, deployed, run_dir: (0.9, None, {"samples": 8, "flops": 40, "wall_s": 0.5}))

    def promote(run_dir, deployed, evaluate=None):
        _, _, cost = evaluate({}, deployed, run_dir)
        return Decision(False, "not-better", "", evaluation=cost)
    monkeypatch.setattr(life, "promote", promote)
    result = life.night(home, TONIGHT, TrainConfig(bn_conditions=0), FakeEnergy(window={"energy_j": 0.5}),
                        run_name="a", quiet=True)
    assert result.decision.evaluation == {"samples": 8, "flops": 40, "wall_s": 0.5, "energy_j": 0.5,
                                          "energy_source": None, "energy_method": None}
    assert (result.cost["flops_all"], result.cost["energy_all_j"], result.cost["wall_all_s"]) == (140, 2.5, 10.5)
    assert result.cost["promote"] == {"samples": 8, "flops": 40, "wall_s": 0.5, "energy_j": 0.5}
    assert engine.names() == ["finetune"]
