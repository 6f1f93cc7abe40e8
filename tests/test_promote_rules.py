"""Promote's rules (edge_sel/engine/night/promote.py) one function at a time, in milliseconds: what
a run directory must hold, which rule decides, the forgetting guard at its boundaries, the cost of
judging the deployed model (FLOPs, samples, wall time) and what promote records around the swap.
No model is trained: runs are JSON files in tmp_path, the deployed model's evaluation is a callback,
and the deployed model's validation pass runs a tiny stand-in module. tests/test_nightly.py and
tests/test_life.py run promote on real fine-tunes."""

import errno
import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edge_sel.core.checkpoint import ModelCard, save_checkpoint
from edge_sel.data import IndexedDataset
from edge_sel.engine.night import journal
from edge_sel.engine.night import promote as pr
from edge_sel.engine.night.deployed_swap import DAMAGED, AfterSwapError
from edge_sel.errors import InputError, WriteError
from edge_sel.models import EdgeCNN
from edge_sel.models.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")

DEPLOYED_WEIGHTS = b"deployed weights"
DEPLOYED_SHA = hashlib.sha256(DEPLOYED_WEIGHTS).hexdigest()


def make_run(path: Path, summary: dict | None = None, config: dict | None = None, card: dict | None = None) -> Path:
    """A run directory as promote reads it: summary, config, weights and card; without `card`, a
    model promote can load and deploy (a tiny EdgeCNN), else that card beside stand-in weights."""
    if card is None:
        save_checkpoint(path, EdgeCNN(2, 1, [2, 2, 2, 2]),
                        ModelCard("edgecnn", 2, ["a", "b"], [1, 8, 8], [0.5], [0.25],
                                  model=ModelSpec("edgecnn", {"widths": [2, 2, 2, 2]}).to_json()))
    else:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"candidate weights")
        (path / "model.json").write_text(json.dumps(card))
    (path / "summary.json").write_text(json.dumps(summary if summary is not None else {}))
    (path / "config.json").write_text(json.dumps(config if config is not None else {}))
    return path


def make_deployed(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(DEPLOYED_WEIGHTS)
    (path / "model.json").write_text("{}")
    return path


def evaluating(val_acc, anchor_acc=None, cost=None):
    """A stand-in for validate_deployed: fixed figures, and the arguments of every call."""
    def evaluate(config, deployed, run_dir):
        evaluate.calls.append((config, deployed, run_dir))
        return val_acc, anchor_acc, cost
    evaluate.calls = []
    return evaluate


def guarded_card(source_guard_acc):
    return {"source_memory": {"anchors": {"guard_acc": source_guard_acc}}}


# ---- read_run, started_from -------------------------------------------------------------------

def test_a_run_directory_must_hold_its_summary_and_model_files(tmp_path):
    with pytest.raises(InputError) as e:
        pr.read_run(tmp_path / "none")
    assert str(e.value) == f"RUN {tmp_path / 'none'}: no such directory"
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(InputError) as e:
        pr.read_run(bare)
    assert str(e.value) == f"RUN {bare}: summary.json is missing (not an edge-sel run directory)"
    run = make_run(tmp_path / "run", {"phase": "finetune"}, {"seed": 3})
    assert pr.read_run(str(run)) == ({"phase": "finetune"}, {"seed": 3})
    for name in ("model.json", "model.safetensors"):
        moved = run / name
        moved.rename(run / "aside")
        with pytest.raises(InputError) as e:
            pr.read_run(run)
        assert str(e.value) == f"RUN {run}: {name} is missing"
        (run / "aside").rename(moved)


def test_an_unreadable_summary_or_config_is_one_line_naming_the_error(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "summary.json").write_text("{cut")
    with pytest.raises(InputError) as e:
        pr.read_run(run)
    assert str(e.value) == f"RUN {run}: unreadable summary.json or config.json (JSONDecodeError)"
    (run / "summary.json").write_text("{}")
    (run / "config.json").unlink()
    with pytest.raises(InputError) as e:
        pr.read_run(run)
    assert str(e.value) == f"RUN {run}: unreadable summary.json or config.json (FileNotFoundError)"


def test_a_run_started_from_the_deployed_model_by_digest_or_else_by_resolved_path(tmp_path, monkeypatch):
    deployed = make_deployed(tmp_path / "deployed")
    assert pr.started_from({"checkpoint_sha256": DEPLOYED_SHA}, deployed) is True
    # The digest decides when it is there, whatever the path says.
    assert pr.started_from({"checkpoint_sha256": "0" * 64, "checkpoint": str(deployed)}, deployed) is False
    assert pr.started_from({"checkpoint": str(deployed)}, deployed) is True
    monkeypatch.chdir(tmp_path / "deployed")
    assert pr.started_from({"checkpoint": "."}, Path("../deployed")) is True        # resolved, both sides
    assert pr.started_from({"checkpoint": str(tmp_path / "other")}, deployed) is False
    assert pr.started_from({}, deployed) is False
    assert pr.started_from({"checkpoint": None, "checkpoint_sha256": None}, deployed) is False


# ---- decide: the rules before any evaluation --------------------------------------------------

def test_an_interrupted_run_is_never_promoted_even_forced(tmp_path):
    run = make_run(tmp_path / "run", {"stop_reason": "interrupted", "output_model": {"val_acc": 0.9}})
    evaluate = evaluating(0.1)
    for force in (False, True):
        d = pr.decide(run, tmp_path / "deployed", force=force, evaluate=evaluate)
        assert d == pr.Decision(False, "interrupted", "the run was interrupted before its last epoch; resume it first")
    assert evaluate.calls == []


def test_a_pretrain_directory_needs_force_and_then_is_a_forced_first(tmp_path):
    run = make_run(tmp_path / "run", {"phase": "pretrain", "output_model": {"val_acc": 0.6}})
    d = pr.decide(run, tmp_path / "deployed")
    assert d == pr.Decision(False, "pretrain", "a pretrain directory, not a fine-tune of the deployed model; "
                                               "--force deploys it after the comparison")
    d = pr.decide(run, tmp_path / "deployed", force=True)
    assert d == pr.Decision(True, "forced-first", "deployed: nothing was deployed before, so this run's model is the first", 0.6)


def test_with_nothing_deployed_a_run_is_first_unless_its_output_is_its_start(tmp_path):
    """A run that kept its warmup and added no condition is its start: "no-gain". A mutant that
    read `kept` from the wrong place, or took a new condition for none, passed before."""
    evaluate = evaluating(0.1)
    plain = make_run(tmp_path / "plain", {"output_model": {"val_acc": 0.7}, "kept": {"kept": "final"}})
    assert pr.decide(plain, tmp_path / "deployed", evaluate=evaluate) == \
        pr.Decision(True, "first", "deployed: nothing was deployed before, so this run's model is the first", 0.7)
    # A directory without model.safetensors is nothing deployed.
    (tmp_path / "deployed").mkdir()
    (tmp_path / "deployed" / "model.json").write_text("{}")
    warm = make_run(tmp_path / "warm", {"output_model": {"val_acc": 0.7}, "kept": {"kept": "warmup"}})
    assert pr.decide(warm, tmp_path / "deployed", evaluate=evaluate) == \
        pr.Decision(False, "no-gain", "nothing is deployed and the run's output is its starting checkpoint "
                                      "(fine-tuning did not beat it)", 0.7)
    banked = make_run(tmp_path / "banked", {"output_model": {"val_acc": 0.7}, "kept": {"kept": "warmup"},
                                            "bn_bank": {"written": True, "tonight": {"new": True}}})
    assert pr.decide(banked, tmp_path / "deployed", evaluate=evaluate) == \
        pr.Decision(True, "first", "deployed: nothing was deployed before, so this run's model is the first", 0.7)
    none_kept = make_run(tmp_path / "none-kept", {"kept": None})
    assert pr.decide(none_kept, tmp_path / "deployed") == pr.Decision(True, "first", "deployed: nothing was deployed before, so this run's model is the first")
    assert evaluate.calls == []


@pytest.mark.parametrize("summary, candidate", [
    ({"output_model": {"val_acc": 0.8}, "kept": {"kept_val_acc": 0.5}}, 0.8),
    ({"output_model": {"anchor_acc": 0.9}, "kept": {"kept_val_acc": 0.5}}, 0.5),      # no val_acc: the kept one
    ({"output_model": None, "kept": {"kept_val_acc": 0.5}}, 0.5),
    ({"kept": {"kept_val_acc": 0.5}}, 0.5),
    ({"output_model": {"val_acc": None}, "kept": {"kept_val_acc": 0.5}}, None),      # stated as none: none
    ({"output_model": {}, "kept": None}, None),
    ({}, None),
])
def test_the_candidates_accuracy_is_the_output_models_else_the_kept_one(tmp_path, summary, candidate):
    run = make_run(tmp_path / "run", summary)
    assert pr.decide(run, tmp_path / "deployed").candidate_val_acc == candidate


def test_a_run_from_another_start_is_judged_only_when_forced(tmp_path):
    deployed = make_deployed(tmp_path / "deployed")
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.8}},
                   {"checkpoint": "/ckpt/old", "checkpoint_sha256": "0" * 64})
    evaluate = evaluating(0.7, cost={"samples": 10})
    d = pr.decide(run, deployed, evaluate=evaluate)
    assert d == pr.Decision(False, "other-start", f"the run started from /ckpt/old (weights 000000000000), not from "
                                                  f"the model deployed now, {deployed.resolve()} (weights "
                                                  f"{DEPLOYED_SHA[:12]}); --force judges it against it anyway", 0.8)
    assert evaluate.calls == []
    d = pr.decide(run, deployed, force=True, evaluate=evaluate)
    assert (d.promote, d.rule, d.candidate_val_acc, d.deployed_val_acc) == (True, "better", 0.8, 0.7)
    assert evaluate.calls == [({"checkpoint": "/ckpt/old", "checkpoint_sha256": "0" * 64}, deployed, run)]


def test_a_run_without_a_validation_accuracy_is_not_judged(tmp_path):
    deployed = make_deployed(tmp_path / "deployed")
    run = make_run(tmp_path / "run", {"output_model": {"anchor_acc": 0.9}}, {"checkpoint_sha256": DEPLOYED_SHA})
    evaluate = evaluating(0.7)
    assert pr.decide(run, deployed, evaluate=evaluate) == \
        pr.Decision(False, "no-validation", "the run has no validation accuracy to compare")
    assert evaluate.calls == []


def test_a_kept_start_that_added_tonights_condition_is_promoted_without_evaluation(tmp_path):
    deployed = make_deployed(tmp_path / "deployed")
    summary = {"output_model": {"val_acc": 0.7}, "kept": {"kept": "warmup"},
               "bn_bank": {"written": True, "tonight": {"new": True, "condition": "fog-3"}}}
    run = make_run(tmp_path / "run", summary, {"checkpoint_sha256": DEPLOYED_SHA})
    evaluate = evaluating(0.9)
    assert pr.decide(run, deployed, evaluate=evaluate) == pr.Decision(
        True, "new-condition", "the run's weights are the deployed model's, and its BatchNorm statistics add "
                               "tonight's condition (fog-3), which the deployed model does not keep", 0.7)
    assert evaluate.calls == []
    # Kept warmup without a new condition: judged as any run (and equal is not better).
    summary["bn_bank"]["tonight"]["new"] = False
    run2 = make_run(tmp_path / "run2", summary, {"checkpoint_sha256": DEPLOYED_SHA})
    d = pr.decide(run2, deployed, evaluate=evaluating(0.7))
    assert (d.promote, d.rule) == (False, "not-better")
    # A new condition with another kept model: judged too.
    summary["bn_bank"]["tonight"]["new"] = True
    summary["kept"]["kept"] = "final"
    run3 = make_run(tmp_path / "run3", summary, {"checkpoint_sha256": DEPLOYED_SHA})
    d = pr.decide(run3, deployed, evaluate=evaluating(0.6))
    assert (d.promote, d.rule) == (True, "better")


@pytest.mark.parametrize("bank, new", [
    (None, False), ({}, False), ({"written": True}, False), ({"written": True, "tonight": None}, False),
    ({"written": True, "tonight": {"new": False}}, False), ({"written": False, "tonight": {"new": True}}, False),
    ({"tonight": {"new": True}}, False), ({"written": True, "tonight": {"new": True}}, True),
])
def test_a_new_condition_is_a_written_bank_that_took_tonight_as_new(bank, new):
    assert pr.new_condition({"bn_bank": bank} if bank is not None else {}) is new


# ---- decide: the comparison -------------------------------------------------------------------

def judged_run(tmp_path, val_acc, anchor_acc=None, source_guard=None, config=None, name="run"):
    output = {"val_acc": val_acc}
    if anchor_acc is not None:
        output["anchor_acc"] = anchor_acc
    return make_run(tmp_path / name, {"output_model": output},
                    {"checkpoint_sha256": DEPLOYED_SHA, **(config or {})},
                    guarded_card(source_guard) if source_guard is not None else {})


def test_better_is_strictly_above_the_deployed_models_accuracy(tmp_path):
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.75)
    cost = {"samples": 8, "flops": 1234}
    d = pr.decide(str(run), str(deployed), evaluate=evaluating(0.75, None, cost))
    assert d == pr.Decision(False, "not-better", "validation accuracy 75.00% does not beat the deployed model's "
                                                 "75.00%", 0.75, 0.75, cost, guard="no anchor set")
    d = pr.decide(run, deployed, evaluate=evaluating(0.7499, None, cost))
    assert d == pr.Decision(True, "better", "validation accuracy 75.00% beats the deployed model's 74.99%",
                            0.75, 0.7499, cost, guard="no anchor set")
    # A deployed model with no validation accuracy (an empty split) is beaten by any figure.
    d = pr.decide(run, deployed, evaluate=evaluating(None, None, None))
    assert d == pr.Decision(True, "better", "validation accuracy 75.00% beats the deployed model's n/a",
                            0.75, None, None, guard="no anchor set")


def test_a_deployed_model_judged_with_the_runs_bank_says_so_beside_its_figure(tmp_path):
    """A mutant that changed the bank's name ("the run's") or the sentence passed before."""
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.5)
    said = (" (its weights with the run's BatchNorm statistics per condition, tonight's included, as the run "
            "judged its start)")
    assert pr.JUDGED_WITH_RUN_BANK == said
    d = pr.decide(run, deployed, evaluate=evaluating(0.625, None, {"bn_bank": "the run's"}))
    assert d.why == "validation accuracy 50.00% does not beat the deployed model's 62.50%" + said
    d = pr.decide(run, deployed, evaluate=evaluating(0.25, None, {"bn_bank": "the run's"}))
    assert d.why == "validation accuracy 50.00% beats the deployed model's 25.00%" + said
    d = pr.decide(run, deployed, evaluate=evaluating(0.25, None, {"bn_bank": "its own"}))
    assert d.why == "validation accuracy 50.00% beats the deployed model's 25.00%"


def test_the_guards_limit_is_promotes_option_else_the_runs_and_zero_is_a_limit(tmp_path):
    """A mutant that took a limit of 0 for no limit (`if max_forgetting`) passed before."""
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.9, anchor_acc=0.899, source_guard=0.9, config={"max_forgetting": 5.0})
    # The run's 5 points: 0.1 points lost is within it; candidate better tonight.
    d = pr.decide(run, deployed, evaluate=evaluating(0.5, 0.95))
    assert (d.rule, d.max_forgetting, d.guard) == ("better", 5.0, None)
    # Promote's 0 points: 0.1 points lost, and below the deployed model's 0.95 on the anchors.
    d = pr.decide(run, deployed, evaluate=evaluating(0.5, 0.95), max_forgetting=0.0)
    assert (d.promote, d.rule, d.max_forgetting) == (False, "forgets", 0.0)
    d = pr.decide(run, deployed, evaluate=evaluating(0.5, 0.95), max_forgetting=7.5)
    assert d.max_forgetting == 7.5
    bare = judged_run(tmp_path, 0.9, anchor_acc=0.5, source_guard=0.9, name="bare")
    d = pr.decide(bare, deployed, evaluate=evaluating(0.5, 0.95))
    assert (d.rule, d.max_forgetting, d.guard) == ("better", None, "no --max-forgetting")


def test_a_candidate_that_forgets_is_refused_with_every_figure_recorded(tmp_path):
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.9, anchor_acc=0.8, source_guard=0.9, config={"max_forgetting": 5.0})
    cost = {"samples": 8, "flops": 99, "anchor_samples": 4}
    d = pr.decide(run, deployed, evaluate=evaluating(0.5, 0.88, cost))
    assert d == pr.Decision(
        False, "forgets", "guard-anchor accuracy 80.00% is 10.00 points below the source model's 90.00% "
                          "(--max-forgetting 5) and below the deployed model's 88.00%",
        candidate_val_acc=0.9, deployed_val_acc=0.5, evaluation=cost, candidate_anchor_acc=0.8,
        deployed_anchor_acc=0.88, source_anchor_acc=0.9, max_forgetting=5.0, guard=None)


def test_a_drifted_deployed_model_is_replaced_by_a_candidate_within_the_limit(tmp_path):
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.7, anchor_acc=0.88, source_guard=0.9, config={"max_forgetting": 5.0})
    d = pr.decide(run, deployed, evaluate=evaluating(0.75, 0.8, {"samples": 8}))
    assert d == pr.Decision(
        True, "restores", "the deployed model has forgotten: guard-anchor accuracy 80.00%, 10.00 points below "
                          "the source model's 90.00% (--max-forgetting 5); the run's model is within it (88.00%), "
                          "so it replaces the drifted one (validation 70.00%, deployed 75.00%)",
        candidate_val_acc=0.7, deployed_val_acc=0.75, evaluation={"samples": 8}, candidate_anchor_acc=0.88,
        deployed_anchor_acc=0.8, source_anchor_acc=0.9, max_forgetting=2.5 * 2, guard=None)


def test_decide_evaluates_with_validate_deployed_by_default(tmp_path, monkeypatch):
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.5)
    fake = evaluating(0.25, None, {"samples": 3})
    monkeypatch.setattr(pr, "validate_deployed", fake)
    d = pr.decide(run, deployed)
    assert (d.rule, d.deployed_val_acc, d.evaluation) == ("better", 0.25, {"samples": 3})
    assert fake.calls == [({"checkpoint_sha256": DEPLOYED_SHA}, deployed, run)]


# ---- the guard --------------------------------------------------------------------------------

def test_the_guard_says_why_it_did_not_apply_first_reason_first():
    assert pr.Guard(0.8, None, None, None).not_applied() == "no anchor set"
    assert pr.Guard(None, 0.8, None, None).not_applied() == \
        "the run's card states no source accuracy on the guard anchors"
    assert pr.Guard(None, 0.8, 0.9, None).not_applied() == \
        "the run's summary states no guard-anchor accuracy for its output model"
    assert pr.Guard(0.8, 0.8, 0.9, None).not_applied() == "no --max-forgetting"
    assert pr.Guard(0.8, 0.8, 0.9, 0.0).not_applied() is None
    for guard in (pr.Guard(0.1, None, 0.9, 1.0), pr.Guard(0.1, 0.8, None, 1.0), pr.Guard(None, 0.8, 0.9, 1.0),
                  pr.Guard(0.1, 0.8, 0.9, None)):
        assert guard.forgets() is False and guard.restores() is False


def test_points_lost_are_below_the_source_models_accuracy_in_points():
    guard = pr.Guard(0.8, 0.85, 0.9, 5.0)
    assert guard.lost(0.8) == 10.0 and guard.lost(0.95) == -5.0 and guard.lost(0.9) == 0.0


@pytest.mark.parametrize("candidate, deployed, forgets", [
    (0.85, 0.95, False),         # exactly 5 points lost: within the limit
    (0.8499, 0.95, True),        # 5.01 points
    (0.8, 0.8, False),           # past the limit, but not below the deployed model
    (0.8, 0.8001, True),
])
def test_a_candidate_forgets_past_the_limit_and_below_the_deployed_model(candidate, deployed, forgets):
    assert pr.Guard(candidate, deployed, 0.9, 5.0).forgets() is forgets


@pytest.mark.parametrize("candidate, deployed, restores", [
    (0.85, 0.8499, True),        # the candidate exactly at the limit, the deployed model past it
    (0.8499, 0.8, False),        # the candidate past it too
    (0.88, 0.85, False),         # the deployed model exactly at the limit: not drifted
    (0.95, 0.8499, True),
])
def test_a_drifted_deployed_model_restores_to_a_candidate_within_the_limit(candidate, deployed, restores):
    assert pr.Guard(candidate, deployed, 0.9, 5.0).restores() is restores


def test_the_guards_sentences_give_points_to_two_places_and_the_limit_as_written():
    guard = pr.Guard(0.81234, 0.9, 0.95, 2.5)
    assert guard.forgets_why() == ("guard-anchor accuracy 81.23% is 13.77 points below the source model's 95.00% "
                                   "(--max-forgetting 2.5) and below the deployed model's 90.00%")
    drifted = pr.Guard(0.94, 0.81234, 0.95, 2.5)
    assert drifted.restores_why(None, 0.6) == (
        "the deployed model has forgotten: guard-anchor accuracy 81.23%, 13.77 points below the source model's "
        "95.00% (--max-forgetting 2.5); the run's model is within it (94.00%), so it replaces the drifted one "
        "(validation n/a, deployed 60.00%)")


def test_percentages_have_two_places_and_none_is_not_available():
    assert pr.pct(None) == "n/a"
    assert pr.pct(0.0) == "0.00%"
    assert pr.pct(0.1234) == "12.34%"
    assert pr.pct(1) == "100.00%"


def test_the_source_anchor_accuracy_is_the_cards_else_none(tmp_path):
    assert pr.source_anchor_acc(tmp_path) is None                                  # no card
    (tmp_path / "model.json").write_text("{broken")                               # refused, not ignored
    with pytest.raises(InputError, match="model.json: unreadable"):
        pr.source_anchor_acc(tmp_path)
    for card in ({}, {"source_memory": None}, {"source_memory": {}}, {"source_memory": {"anchors": None}},
                 {"source_memory": {"anchors": {}}}):
        (tmp_path / "model.json").write_text(json.dumps(card))
        assert pr.source_anchor_acc(str(tmp_path)) is None
    (tmp_path / "model.json").write_text(json.dumps(guarded_card(0.875)))
    assert pr.source_anchor_acc(str(tmp_path)) == 0.875
    (tmp_path / "model.json").write_text(json.dumps(guarded_card("0.875")))       # no figure
    assert pr.source_anchor_acc(tmp_path) is None


def test_the_runs_evaluation_batch_is_its_layouts_else_none(tmp_path):
    assert pr.run_eval_batch(pr.run_summary(None)) is None
    assert pr.run_eval_batch(pr.run_summary(tmp_path)) is None                     # no summary
    for text in ("{broken", "[]", "{}", '{"layout": null}', '{"layout": {}}'):
        (tmp_path / "summary.json").write_text(text)
        assert pr.run_eval_batch(pr.run_summary(tmp_path)) is None
    (tmp_path / "summary.json").write_text('{"layout": {"eval_batch_size": 48}}')
    assert pr.run_eval_batch(pr.run_summary(str(tmp_path))) == 48


# ---- validate_deployed: the deployed model's figures ------------------------------------------

BRIGHT, DARK = 200, 20


def dataset(bright: list[bool], labels: list[int], name: str = "val") -> IndexedDataset:
    """1 x 4 x 4 images, each all bright or all dark; the stand-in model calls bright ones class 0."""
    images = torch.tensor([BRIGHT if b else DARK for b in bright], dtype=torch.uint8).view(-1, 1, 1, 1)
    images = images.expand(-1, 1, 4, 4).contiguous()
    n = len(bright)
    return IndexedDataset(images, torch.tensor(labels, dtype=torch.long), torch.arange(n), ["a", "b"], name=name)


class Bright(nn.Module):
    """Logits (m, -m) of each image's mean normalised pixel: class 0 when brighter than the card's
    mean. Remembers the size of every batch and whether it was in eval mode."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []
        self.modes: list[bool] = []

    def forward(self, x):
        self.batches.append(len(x))
        self.modes.append(self.training)
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], 1).double()


class Counter:
    """A FLOP counter whose batch costs its size squared: a different batch size shows in the sum."""

    def __init__(self, model, input_shape):
        self.model, self.input_shape = model, input_shape

    def eval_batch(self, n: int) -> int:
        return n * n


class Bank:
    """A BatchNorm bank with two conditions of 3 and 5 images; every pass chose a condition for
    the images in `chosen` (one entry per pass) at 11 FLOPs an image."""

    def __init__(self, chosen, refresh_flops=500):
        self.conditions = [SimpleNamespace(images=list(range(3))), SimpleNamespace(images=list(range(5)))]
        self.chosen = list(chosen)
        self.refresh_flops = refresh_flops
        self.calls = []

    def refresh(self, model, counter, batch, memory_format=torch.contiguous_format):
        self.calls.append(("refresh", model, counter, batch))
        self.memory_format = memory_format
        return {"flops": self.refresh_flops, "samples": 8}

    def attach(self, model):
        self.calls.append(("attach", model))

    def take_selected(self):
        return self.chosen.pop(0)

    def choice_flops(self, input_shape):
        self.calls.append(("choice", input_shape))
        return 11


# 6 of 8 validation images right, 2 of 4 guard anchors.
VAL = ([True, True, True, True, False, False, False, False], [0, 0, 0, 1, 1, 1, 1, 0])
GUARD = ([True, False, True, False], [0, 0, 1, 1])
FEATURES = 100          # feature_flops of a 1 x 4 x 4 image: 5 * 4 + 3 * (16 + 4) + 20 * 1


@pytest.fixture
def deployed_parts(monkeypatch):
    """validate_deployed's collaborators as stand-ins: the data, the checkpoint, the source memory,
    the banks, the FLOP counter and a clock; `parts` holds what each was given."""
    from edge_sel.core import flops
    from edge_sel.engine.evaluation import bn_bank
    from edge_sel.engine.levers import anchors
    from edge_sel.engine.runs import data_options
    import edge_sel.models as models
    parts = SimpleNamespace(model=Bright(), card=SimpleNamespace(mean=[0.5], std=[0.25]),
                            val=dataset(*VAL), train=dataset([True], [0], "train"), memory=None,
                            run_bank=None, saved_bank=None, calls=[],
                            clock=iter([1.0, 3.0, 7.0, 15.0]))

    def load(self):
        parts.calls.append(("data", self.dataset, self.data_dir, self.subset))
        return SimpleNamespace(train=parts.train, val=parts.val)

    def load_checkpoint(directory):
        parts.calls.append(("checkpoint", directory))
        return parts.model, parts.card

    def check_compatible(card, splits, where):
        parts.calls.append(("compatible", card, splits.val, where))

    def load_memory(checkpoint, card, reference):
        parts.calls.append(("memory", checkpoint, card, reference))
        return parts.memory

    def run_bank_for(model, run_dir, card, source_state=None):
        parts.calls.append(("run bank", model, run_dir, card, source_state))
        return parts.run_bank

    def attach_saved_bank(model, directory, card):
        parts.calls.append(("saved bank", model, directory, card))
        return parts.saved_bank

    def counter(model, input_shape):
        parts.counter = Counter(model, input_shape)
        return parts.counter

    monkeypatch.setattr(data_options.DataOptions, "load", load)
    monkeypatch.setattr(data_options, "check_compatible", check_compatible)
    monkeypatch.setattr(models, "load_checkpoint", load_checkpoint)
    monkeypatch.setattr(anchors, "load_memory", load_memory)
    monkeypatch.setattr(bn_bank, "run_bank_for", run_bank_for)
    monkeypatch.setattr(bn_bank, "attach_saved_bank", attach_saved_bank)
    monkeypatch.setattr(flops, "FlopCounter", counter)
    monkeypatch.setattr(pr.time, "perf_counter", lambda: next(parts.clock))
    return parts


def checked(cost: dict, batch: int) -> dict:
    """The cost without what every judgement states: the run's settings it was judged in (a run
    that states none: fp32, contiguous, this process's threads) and the whole check's seconds."""
    assert cost.pop("judged_as") == {"precision": "fp32", "memory_format": "contiguous", "eval_batch_size": batch,
                                     "threads": None}
    assert cost.pop("total_s") >= 0
    return cost


def test_the_deployed_model_with_the_runs_bank_and_anchors_counts_every_pass(tmp_path, deployed_parts):
    """Validation (8 images in batches of 3: 9 + 9 + 4 FLOPs, 8 choices at 11), the bank's
    conditions described once (8 images at 100), its re-estimate (500), and the anchors (4 images,
    counted as batches of 3 and 1 though the loader runs them as one: 9 + 1, 4 choices at 11).
    Mutants in any of these sums passed before."""
    parts = deployed_parts
    parts.memory = SimpleNamespace(source={"w": torch.zeros(1)}, guard=dataset(*GUARD, name="guard"))
    parts.run_bank = Bank([8, 4])
    config = {"data": {"dataset": "synthetic", "subset": 40}, "eval_batch_size": 3}
    deployed = tmp_path / "deployed"
    val_acc, anchor_acc, cost = pr.validate_deployed(config, deployed, str(tmp_path / "run"))
    assert val_acc == 0.75 and anchor_acc == 0.5
    val_flops = 9 + 9 + 4 + 8 * 11
    anchor_flops = 9 + 1 + 4 * 11
    assert checked(cost, 3) == {"samples": 8, "flops": val_flops + 8 * FEATURES + 500 + anchor_flops,
                                "wall_s": 2.0 + 8.0,
                    "device": "cpu", "energy": "not measured", "flops_bank_choice": 8 * FEATURES,
                    "bn_bank": "the run's", "flops_bank_estimate": 500, "anchor_samples": 4,
                    "anchor_flops": anchor_flops, "anchor_wall_s": 8.0}
    assert cost["flops"] == 1464
    assert parts.model.batches == [3, 3, 2, 4] and parts.model.modes == [False] * 4
    assert parts.counter.model is parts.model and parts.counter.input_shape == [1, 4, 4]
    assert parts.calls == [("data", "synthetic", None, 40), ("checkpoint", deployed),
                           ("compatible", parts.card, parts.val, deployed),
                           ("memory", tmp_path / "run", parts.card, parts.train),
                           ("run bank", parts.model, tmp_path / "run", parts.card, parts.memory.source)]
    assert parts.run_bank.calls == [("refresh", parts.model, parts.counter, 3), ("attach", parts.model),
                                    ("choice", [1, 4, 4]), ("choice", [1, 4, 4])]


def test_without_the_runs_bank_the_deployed_model_keeps_its_own(tmp_path, deployed_parts):
    parts = deployed_parts
    parts.saved_bank = Bank([8])
    config = {"data": {"dataset": "cifar10", "data_dir": "/data/cifar"}, "eval_batch_size": 3}
    val_acc, anchor_acc, cost = pr.validate_deployed(config, tmp_path / "deployed", tmp_path / "run")
    assert val_acc == 0.75 and anchor_acc is None
    assert checked(cost, 3) == {"samples": 8, "flops": 22 + 8 * 11 + 8 * FEATURES, "wall_s": 2.0, "device": "cpu",
                    "energy": "not measured", "flops_bank_choice": 8 * FEATURES, "bn_bank": "its own"}
    assert parts.calls[0] == ("data", "cifar10", "/data/cifar", None)
    assert parts.calls[-2:] == [("run bank", parts.model, tmp_path / "run", parts.card, None),
                                ("saved bank", parts.model, tmp_path / "deployed", parts.card)]
    assert parts.saved_bank.calls == [("choice", [1, 4, 4])]           # as saved: no re-estimate, no attach


def test_a_run_bank_that_re_estimated_nothing_states_no_estimate(tmp_path, deployed_parts):
    parts = deployed_parts
    parts.run_bank = Bank([8], refresh_flops=0)
    _, _, cost = pr.validate_deployed({"data": {"dataset": "synthetic"}, "eval_batch_size": 3},
                                      tmp_path / "deployed", tmp_path / "run")
    assert checked(cost, 3) == {"samples": 8, "flops": 22 + 8 * 11 + 8 * FEATURES, "wall_s": 2.0, "device": "cpu",
                    "energy": "not measured", "flops_bank_choice": 8 * FEATURES, "bn_bank": "the run's"}


def test_anchors_without_a_bank_count_only_the_forward_passes(tmp_path, deployed_parts):
    parts = deployed_parts
    parts.memory = SimpleNamespace(source={}, guard=dataset(*GUARD, name="guard"))
    val_acc, anchor_acc, cost = pr.validate_deployed({"data": {"dataset": "synthetic"}, "eval_batch_size": 3},
                                                     tmp_path / "deployed", tmp_path / "run")
    assert (val_acc, anchor_acc) == (0.75, 0.5)
    assert checked(cost, 3) == {"samples": 8, "flops": 22 + 10, "wall_s": 10.0, "device": "cpu",
                                "energy": "not measured",
                    "anchor_samples": 4, "anchor_flops": 10, "anchor_wall_s": 8.0}


def test_the_evaluation_batch_is_the_configs_else_the_runs_layout_else_256(tmp_path, deployed_parts):
    """300 images: in batches of 256 and 44 (65536 + 1936 FLOPs at a batch's size squared); a
    mutant with another default batch passed before."""
    parts = deployed_parts
    parts.val = dataset([True] * 300, [0] * 299 + [1])
    _, _, cost = pr.validate_deployed({"data": {"dataset": "synthetic"}}, tmp_path / "deployed")
    assert checked(cost, 256) == {"samples": 300, "flops": 256 ** 2 + 44 ** 2, "wall_s": 2.0, "device": "cpu",
                    "energy": "not measured"}
    assert parts.model.batches == [256, 44]
    assert [c[0] for c in parts.calls] == ["data", "checkpoint", "compatible", "saved bank"]   # no run: no memory
    # The run's layout when the config states none; the config's first.
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"layout": {"eval_batch_size": 100}}')
    parts.model.batches.clear()
    parts.clock = iter([0.0, 1.0])
    _, _, cost = pr.validate_deployed({"data": {"dataset": "synthetic"}, "eval_batch_size": None},
                                      tmp_path / "deployed", run)
    assert parts.model.batches == [100, 100, 100] and cost["flops"] == 3 * 100 ** 2
    parts.model.batches.clear()
    parts.clock = iter([0.0, 1.0])
    _, _, cost = pr.validate_deployed({"data": {"dataset": "synthetic"}, "eval_batch_size": 150},
                                      tmp_path / "deployed", run)
    assert parts.model.batches == [150, 150] and cost["flops"] == 2 * 150 ** 2


def test_the_deployed_model_is_validated_on_the_runs_draw_of_val_subset(tmp_path, deployed_parts):
    from edge_sel.engine.evaluation.evaluate import accuracy, validation_subset
    parts = deployed_parts
    config = {"data": {"dataset": "synthetic"}, "eval_batch_size": 3, "val_subset": 5}
    val_acc, _, cost = pr.validate_deployed(config, tmp_path / "deployed")
    drawn = validation_subset(parts.val, 5)
    assert cost["samples"] == 5 and cost["flops"] == 9 + 4 and parts.model.batches == [3, 2]
    called = (drawn.images[:, 0, 0, 0] == DARK).long()             # the stand-in's classes
    assert val_acc == accuracy(nn.functional.one_hot(called, 2).float(), drawn.labels) == pytest.approx(3 / 5)
    parts.model.batches.clear()
    parts.clock = iter([0.0, 1.0])
    _, _, cost = pr.validate_deployed({**config, "val_subset": None}, tmp_path / "deployed")
    assert cost["samples"] == 8 and parts.model.batches == [3, 3, 2]


# ---- promote: the record and the swap ---------------------------------------------------------

WHEN = time.struct_time((2026, 11, 23, 2, 30, 5, 0, 327, 0))


@pytest.fixture
def fixed_time(monkeypatch):
    monkeypatch.setattr(pr.time, "gmtime", lambda *a: WHEN)


def test_a_first_model_is_swapped_in_and_recorded_with_its_version(tmp_path, fixed_time):
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    deployed = tmp_path / "deployed"
    d = pr.promote(str(run), str(deployed))
    assert d == pr.Decision(True, "first", "deployed: nothing was deployed before, so this run's model is the first", 0.7)
    version = deployed.resolve()
    assert version.parent == tmp_path / ".deployed.versions"
    assert (deployed / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    record = {"promote": True, "rule": "first", "why": "deployed: nothing was deployed before, so this run's model is the first", "candidate_val_acc": 0.7,
              "deployed_val_acc": None, "evaluation": {}, "candidate_anchor_acc": None, "deployed_anchor_acc": None,
              "source_anchor_acc": None, "max_forgetting": None, "guard": None, "run": str(run),
              "deployed": str(deployed), "force": False, "when": "2026-11-23T02:30:05Z"}
    # The run's journal: the decision, then the deployment, each a line of its own.
    assert journal.read_from(run / "promote.jsonl") == [
        {"event": "decision", **record},
        {"event": "deployed", "when": "2026-11-23T02:30:05Z", "run": str(run), "version": str(version),
         "rule": "first", "previous": None}]
    assert journal.run_decisions(run) == [{**record, "version": str(version)}]
    assert not (run / "promote.json").exists()


def test_a_run_not_promoted_is_recorded_and_nothing_is_swapped(tmp_path, fixed_time, monkeypatch):
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.5)
    monkeypatch.setattr(pr, "swap_in", lambda *a: pytest.fail("swapped"))
    evaluate = evaluating(0.625, None, {"samples": 8})
    d = pr.promote(run, deployed, force=True, evaluate=evaluate, max_forgetting=3.0)
    assert (d.promote, d.rule, d.max_forgetting) == (False, "not-better", 3.0)
    record = journal.last_decision(run)
    assert record["force"] is True and record["rule"] == "not-better" and "version" not in record
    assert record["evaluation"] == {"samples": 8} and record["when"] == "2026-11-23T02:30:05Z"
    assert (deployed / "model.safetensors").read_bytes() == DEPLOYED_WEIGHTS
    # Judged again: a second line; the first is kept as it was.
    first = (run / "promote.jsonl").read_bytes()
    assert pr.promote(run, deployed, evaluate=evaluate).rule == "not-better"
    assert (run / "promote.jsonl").read_bytes().startswith(first) and len(first) > 100
    assert [(r["rule"], r["force"]) for r in journal.run_decisions(run)] == [("not-better", True), ("not-better", False)]


def test_the_decision_is_recorded_before_the_swap(tmp_path, fixed_time, monkeypatch):
    """A crash after the link flips must leave a record: a mutant that wrote it only after the
    swap passed before."""
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    seen = []

    def swap_in(run_dir, deployed):
        seen.append(journal.last_decision(run_dir))
        return tmp_path / "v1"
    monkeypatch.setattr(pr, "swap_in", swap_in)
    pr.promote(run, tmp_path / "deployed")
    assert len(seen) == 1 and seen[0]["rule"] == "first" and "version" not in seen[0]
    assert journal.last_decision(run)["version"] == str(tmp_path / "v1")


def test_a_failure_after_the_swap_is_a_warning_and_the_record_keeps_the_version(tmp_path, fixed_time, monkeypatch,
                                                                               capsys):
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    version = tmp_path / ".deployed.versions" / "20261123T023005Z-run"

    def swap_in(run_dir, deployed):
        raise AfterSwapError(version, OSError(errno.EIO, "Input/output error"))
    monkeypatch.setattr(pr, "swap_in", swap_in)
    d = pr.promote(run, tmp_path / "deployed")
    assert d.promote is True
    record = journal.last_decision(run)
    assert record["version"] == str(version) and record["after_swap_error"] == "Input/output error"
    assert capsys.readouterr().err == (
        f"edge-sel: warning: --deployed {tmp_path / 'deployed'} now holds the run's model (20261123T023005Z-run), "
        f"but a step after the swap failed (Input/output error); the previous version may not have been pruned\n")


def test_a_failed_swap_is_one_line_and_recorded_without_a_version(tmp_path, fixed_time, monkeypatch):
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    deployed = tmp_path / "deployed"

    def swap_in(run_dir, deployed):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pr, "swap_in", swap_in)
    with pytest.raises(WriteError) as e:
        pr.promote(run, deployed)
    assert str(e.value) == (f"--deployed {deployed}: cannot replace the deployed model (No space left on device); "
                            f"it is unchanged")
    record = journal.last_decision(run)
    assert record["swap_error"] == "[Errno 28] No space left on device" and "version" not in record
    assert record["rule"] == "first"
    monkeypatch.setattr(pr, "swap_in", lambda *a: (_ for _ in ()).throw(OSError("no errno")))
    with pytest.raises(WriteError) as e:
        pr.promote(run, deployed)
    assert str(e.value) == f"--deployed {deployed}: cannot replace the deployed model (no errno); it is unchanged"
    assert [(r["rule"], r["swap_error"]) for r in journal.run_decisions(run)] == [
        ("first", "[Errno 28] No space left on device"), ("first", "no errno")]
    assert [line["event"] for line in journal.read(deployed)] == ["decision", "swap-failed"] * 2


def test_a_failed_swap_whose_history_cannot_record_it_either_is_still_one_line(tmp_path, fixed_time, monkeypatch,
                                                                                 capsys):
    """A full disk failed the swap and then the history's swap-failed line: a warning and the
    error made two lines (the chaos nights, a disk full after 2 MB)."""
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    deployed = tmp_path / "deployed"
    real = journal.append_to

    def history_fills(path, event, **fields):
        if event == "swap-failed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, event, **fields)
    monkeypatch.setattr(journal, "append_to", history_fills)
    monkeypatch.setattr(pr, "swap_in", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(WriteError) as e:
        pr.promote(run, deployed)
    assert str(e.value) == (f"--deployed {deployed}: cannot replace the deployed model (No space left); it is "
                            f"unchanged, and deployed.history.jsonl cannot record that")
    assert capsys.readouterr().err == ""
    assert [line["event"] for line in journal.read(deployed)] == ["decision"]
    # A decision not to promote whose line cannot be written is a warning (the decision stands).
    monkeypatch.setattr(journal, "append_to", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    assert pr._journal(deployed, "decision", {"run": "r"}) is False
    assert capsys.readouterr().err == (f"edge-sel: warning: {deployed.parent / 'deployed.history.jsonl'}: cannot "
                                       f"write (I/O); this decision is not in the deployed model's history\n")
    assert pr._journal(tmp_path / "nowhere" / "deployed", "decision", {}) is True      # nothing deployed there


def test_an_interrupted_swap_is_repaired_first_or_promote_stops(tmp_path, fixed_time, monkeypatch):
    run = make_run(tmp_path / "run", {"stop_reason": "interrupted"})
    repaired = []
    monkeypatch.setattr(pr, "recover", lambda deployed: repaired.append(deployed))
    pr.promote(str(run), str(tmp_path / "deployed"))
    assert repaired == [tmp_path / "deployed"]

    def broken(deployed):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(pr, "recover", broken)
    (run / "promote.jsonl").unlink()
    with pytest.raises(WriteError) as e:
        pr.promote(run, tmp_path / "deployed")
    assert str(e.value) == f"--deployed {tmp_path / 'deployed'}: cannot repair an interrupted swap (Permission denied)"
    assert not (run / "promote.jsonl").exists()
    monkeypatch.setattr(pr, "recover", lambda deployed: (_ for _ in ()).throw(OSError("plain")))
    with pytest.raises(WriteError) as e:
        pr.promote(run, tmp_path / "deployed")
    assert str(e.value) == f"--deployed {tmp_path / 'deployed'}: cannot repair an interrupted swap (plain)"


def test_a_run_directory_that_cannot_be_written_keeps_no_record_and_the_decision_stands(tmp_path, fixed_time,
                                                                                         monkeypatch):
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    writes, real = [], journal.append_to

    def refuse(path, event, **fields):
        writes.append((path, event))
        if path.parent == run:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, event, **fields)
    monkeypatch.setattr(journal, "append_to", refuse)
    d = pr.promote(run, tmp_path / "deployed")
    assert d.promote is True and (tmp_path / "deployed" / "model.safetensors").is_file()
    assert writes[1::2] == [(run / "promote.jsonl", "decision"), (run / "promote.jsonl", "deployed")]
    assert not (run / "promote.jsonl").exists() and len(journal.read(tmp_path / "deployed")) == 2


def test_not_promoted_exits_three():
    assert pr.NOT_PROMOTED_EXIT == 3


def test_the_after_swap_warning_is_flushed_at_once(tmp_path, fixed_time, monkeypatch):
    """A nightly script may be killed right after: the warning must not wait in a buffer. A mutant
    that printed it without flush=True passed before."""
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})

    class Stream:
        def __init__(self):
            self.events = []

        def write(self, text):
            self.events.append(("write", text))

        def flush(self):
            self.events.append(("flush",))

    stream = Stream()
    monkeypatch.setattr(pr, "swap_in", lambda run_dir, deployed: (_ for _ in ()).throw(
        AfterSwapError(tmp_path / "v1", OSError(errno.EIO, "Input/output error"))))
    monkeypatch.setattr(pr.sys, "stderr", stream)
    pr.promote(run, tmp_path / "deployed")
    assert stream.events[-1] == ("flush",)
    assert "".join(e[1] for e in stream.events if e[0] == "write").startswith("edge-sel: warning: --deployed ")


def test_promote_with_the_warmup_serving_judges_against_no_version_set_aside(tmp_path, fixed_time):
    """Issue 45, item 9: with every version set aside and the warmup serving, promote's repair
    pointed the link at another version before deciding, and judged the run against it."""
    versions = tmp_path / ".deployed.versions"
    for name in ("20260101T000000Z-a" + DAMAGED, "20260102T000000Z-b"):
        make_deployed(versions / name)
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    d = pr.promote(run, tmp_path / "deployed", evaluate=lambda *a: pytest.fail("judged against a version"))
    assert (d.promote, d.rule) == (True, "first")
    assert (tmp_path / "deployed" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()


def test_promotes_line_gives_the_passes_apart_from_the_whole_check_it_metered():
    """The joules of a night's promote cover reading and shifting the data and loading the model
    too: the line says so, with the passes' seconds apart."""
    from edge_sel.cli_promote import decision_line
    cost = {"samples": 1000, "anchor_samples": 200, "flops": 2.5e9, "wall_s": 0.4, "total_s": 9.7, "energy_j": 280.2,
            "flops_bank_estimate": 1e8}
    line = decision_line(pr.Decision(False, "not-better", "why", evaluation=cost), "RUN")
    assert line.endswith("[deployed model validated on 1000 samples and 200 guard anchors, 2.50 GFLOP, validation "
                         "passes 0.4 s; the whole check 9.7 s with reading and shifting the data and loading the "
                         "model, re-estimating the bank, 280.2 J]")
    plain = decision_line(pr.Decision(True, "better", "why", evaluation={"samples": 8, "flops": 1e9, "wall_s": 0.1}),
                          "RUN")
    assert plain.endswith("[deployed model validated on 8 samples, 1.00 GFLOP, validation passes 0.1 s]")


def test_the_deployed_model_is_judged_in_the_runs_own_evaluation_settings(tmp_path):
    def settings(run_dir):
        return pr.run_evaluation(pr.run_summary(run_dir))
    assert settings(tmp_path) == {"eval": "fp32", "memory_format": "contiguous", "threads": None}
    (tmp_path / "summary.json").write_text(json.dumps({"precision": {"train": "bf16", "eval": "bf16"},
                                                       "layout": {"memory_format": "channels_last"},
                                                       "threads": {"count": 2}}))
    assert settings(tmp_path) == {"eval": "bf16", "memory_format": "channels_last", "threads": 2}
    (tmp_path / "summary.json").write_text(json.dumps({"precision": "bf16", "layout": {"memory_format": "nhwc"}}))
    assert settings(tmp_path) == {"eval": "fp32", "memory_format": "contiguous", "threads": None}


def test_a_journal_replaced_by_a_link_is_never_written_through(tmp_path, fixed_time):
    """promote.jsonl (or the deployed history, or metrics.jsonl) as a link to another file: the old
    code appended its decision line to that file; now nothing is written through the link."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    deployed = tmp_path / "deployed"
    journal.journal_path(deployed).symlink_to(victim)       # the history: promote refuses to swap unrecorded
    run = make_run(tmp_path / "run", {"output_model": {"val_acc": 0.7}})
    with pytest.raises(WriteError, match="a link; edge-sel appends through no link"):
        pr.promote(run, deployed)
    assert not os.path.lexists(deployed)
    journal.journal_path(deployed).unlink()
    (run / "promote.jsonl").symlink_to(victim)              # the run's: the decision stands, unrecorded there
    assert pr.promote(run, deployed).rule == "first" and (deployed / "model.safetensors").is_file()
    with pytest.raises(OSError, match="appends through no link"):
        journal.append_to(run / "promote.jsonl", "decision")
    from edge_sel.core.records import RecordWriter
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(WriteError, match="appends through no link"):
        RecordWriter(tmp_path / "records").append({"epoch": 0})
    assert victim.read_text() == "the user's own file\n"


def test_promote_judges_holding_the_deployed_lock(tmp_path):
    """Killed the mutant that judges without the deployed lock (only the swap took it): a roll back or
    another promote could then change the deployed model between its judging and the swap."""
    from edge_sel.core import lock_file
    deployed = make_deployed(tmp_path / "deployed")
    run = judged_run(tmp_path, 0.75)
    held = []

    def evaluate(config, judged, run_dir):
        fd = lock_file.acquire(tmp_path / ".deployed.lock", wait=False)      # as another command would
        held.append(fd is None)
        if fd is not None:
            lock_file.release(tmp_path / ".deployed.lock", fd)
        return 0.8, None, None
    assert pr.promote(run, deployed, evaluate=evaluate).rule == "not-better"
    assert held == [True]
