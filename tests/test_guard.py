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

from helpers import SAME_CHOICES, records, run_cli, stable, summary
from edge_sel.config import TrainConfig
from edge_sel.engine.evaluation.evaluate import accuracy, predict_dataset
from edge_sel.engine.night import journal
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune
from edge_sel.engine.loop.state import load_state
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
    assert s["validation_size"]["validation_passes"] == 2          # the start's and the epoch's


def test_a_start_whose_classifier_never_trained_is_not_evaluated(tmp_path):
    """Chance by construction: no validation or test of the start, no candidate, one pass fewer in the
    validation's share."""
    run_cli("pretrain", "--model", "edgecnn", "--dataset", "synthetic", "--epochs", "0", "--anchors-per-class", "0",
            "--out", tmp_path / "fresh", "--quiet")
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tmp_path / "fresh", "--out", out, "--epochs", "1", *RUN)
    base, first = records(out, baseline=True)
    assert base["evaluated"] == "none" and base["start_at_chance"] == 0.25        # four classes
    assert base["val_acc"] is None and base["test_acc"] is None and base["flops_eval"] == 0 == base["eval_energy_j"]
    s = summary(out)
    assert s["totals"]["flops_eval"] == first["flops_eval"] and s["validation_size"]["validation_passes"] == 1
    assert s["kept"]["kept_epoch"] == 0 and "at chance" in s["kept"]["reason"]


def test_a_normal_fine_tune_keeps_its_trained_model_unless_validation_resolves_it_worse(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", out, "--epochs", "4", *RUN)
    base, *epochs = records(out, baseline=True)
    kept = summary(out)["kept"]
    if kept["kept_epoch"] == epochs[-1]["epoch"]:       # the trained model: best, or nothing resolvably better
        assert kept["rule"] == "best" or (kept["rule"] == "unresolved" and kept["paired"]["p"] >= 0.05)
    else:           # an earlier one, where the last epoch validated resolvably below it
        last = kept["overruled"][-1]
        assert last["epoch"] == epochs[-1]["epoch"] and last["p"] < 0.05 and last["by_val_acc"] > last["val_acc"]
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
    args = ["finetune", "--checkpoint", str(tiny_warm), "--epochs", "4", "--checkpoint-every", "3", *RUN,
            *SAME_CHOICES]
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


# -- the guard that sees the whole life: forgetting on the source's guard anchors --------------------

import shutil                                                           # noqa: E402

from helpers import run_main                                            # noqa: E402
from edge_sel.core.flops import FlopCounter                             # noqa: E402
from edge_sel.core.source_memory import SOURCE_FILES                  # noqa: E402
from edge_sel.engine.evaluation.evaluate import evaluation_flops                   # noqa: E402
from edge_sel.engine.evaluation.keep import BN_ADAPT_EPOCH, WARMUP_EPOCH, ModelChoice  # noqa: E402
from edge_sel.engine.loop.progress_log import ProgressLog                    # noqa: E402
from edge_sel.engine.night.promote import decide                              # noqa: E402

SERVER, DEVICE = DataOptions("digits", shard="0/2"), DataOptions("digits", shard="1/2", shift="corrupt=contrast:5")
EVAL_BATCH = 128
# Fixed layout and precision: no probes, and every run evaluates in the same batches.
FIXED = dict(batch_size=32, lr=0.05, seed=0, eval_batch_size=EVAL_BATCH, memory_format="contiguous",
             precision="fp32", eval_precision="fp32")
SEEN = ("epoch", "val_acc", "anchor_acc", "train_loss", "flops_train", "flops_anchor")     # what a choice does not change


@pytest.fixture(scope="module")
def digits_source(tmp_path_factory):
    """A digits warmup with the source memory pretrain ships (20 anchors per class: 10 replay, 10
    guard), and its twin without (same weights, as a checkpoint from before the memory existed)."""
    root = tmp_path_factory.mktemp("digits-source")
    warm, bare = root / "warm", root / "bare"
    from edge_sel.engine.runs.run import pretrain
    pretrain("edgecnn", SERVER, TrainConfig(epochs=4, **{**FIXED, "batch_size": 64}, anchors_per_class=20,
                                            fisher_samples=64), warm, quiet=True)
    shutil.copytree(warm, bare)
    for name in SOURCE_FILES:
        (bare / name).unlink()
    card = json.loads((bare / "model.json").read_text())
    del card["source_memory"]
    (bare / "model.json").write_text(json.dumps(card))
    return warm, bare


@pytest.fixture(scope="module")
def forgetting_run(digits_source, tmp_path_factory):
    """Fine-tuned on heavily low-contrast local digits with a high learning rate: validation (low
    contrast) climbs, the clean guard anchors fall far. --max-forgetting 3."""
    warm, _ = digits_source
    out = tmp_path_factory.mktemp("forgets") / "run"
    finetune(warm, DEVICE, TrainConfig(epochs=3, bn_adapt=200, max_forgetting=3.0, **FIXED), out, quiet=True)
    return out


def test_an_epoch_that_gains_on_validation_but_forgets_is_not_kept_and_the_rule_is_named(forgetting_run,
                                                                                         digits_source):
    base, *epochs = records(forgetting_run, baseline=True)
    source = json.loads((digits_source[0] / "model.json").read_text())["source_memory"]["anchors"]["guard_acc"]
    assert base["anchor_acc"] == pytest.approx(source) and base["anchor_forgetting"] == pytest.approx(0, abs=1e-3)
    # The construction: every epoch beats the start on validation and forgets far more than 3 points.
    assert all(r["val_acc"] > base["val_acc"] + 0.2 and r["anchor_forgetting"] > 20 for r in epochs)
    assert all(r["anchor_forgetting"] == pytest.approx(100 * (source - r["anchor_acc"]), abs=1e-3) for r in epochs)
    s = summary(forgetting_run)
    kept = s["kept"]
    assert kept["rule"] == "forgets" and kept["kept"] == "warmup" and kept["kept_epoch"] == WARMUP_EPOCH
    best = epochs[-1]           # the trained model: what validation alone would have kept
    assert f"epoch {best['epoch']} would have been kept on validation ({100 * best['val_acc']:.2f}%)" in kept["reason"]
    assert f"{best['anchor_forgetting']:.2f} points below the source model's {100 * source:.2f}%" in kept["reason"]
    assert "--max-forgetting 3" in kept["reason"]
    # The BatchNorm-adapted candidate is judged the same way (here it forgot too: low-contrast statistics).
    assert [r["epoch"] for r in kept["refused"]] == [BN_ADAPT_EPOCH] + [r["epoch"] for r in epochs]
    assert epochs[0]["bn_adapt_anchor_acc"] == kept["refused"][0]["anchor_acc"]
    assert kept["guard"]["max_forgetting"] == 3.0 and kept["guard"]["source_anchor_acc"] == source
    assert s["output_model"]["anchor_acc"] == base["anchor_acc"] == kept["kept_anchor_acc"]
    start, end = tensors(digits_source[0]), tensors(forgetting_run)
    assert all(torch.equal(start[k], end[k]) for k in start)           # the earlier model: the start, unchanged
    assert json.loads((forgetting_run / "model.json").read_text())["training"]["rule"] == "forgets"


@pytest.fixture(scope="module")
def lenient_run(forgetting_run, digits_source, tmp_path_factory):
    """The same fine-tune with --max-forgetting above anything it forgot."""
    limit = max(r["anchor_forgetting"] for r in records(forgetting_run)) + 1
    out = tmp_path_factory.mktemp("lenient") / "run"
    finetune(digits_source[0], DEVICE, TrainConfig(epochs=3, bn_adapt=200, max_forgetting=limit, **FIXED), out,
             quiet=True)
    return out


def test_the_same_run_with_a_limit_above_its_forgetting_keeps_its_best_epoch(forgetting_run, lenient_run):
    out, epochs = lenient_run, records(forgetting_run)
    assert [[r.get(k) for k in SEEN] for r in records(out, baseline=True)] == \
        [[r.get(k) for k in SEEN] for r in records(forgetting_run, baseline=True)]      # the same passes
    kept = summary(out)["kept"]
    best = max(epochs, key=lambda r: r["val_acc"])
    assert kept["rule"] == "best" and kept["kept_epoch"] == best["epoch"] and kept["refused"] == []
    assert summary(out)["output_model"]["anchor_acc"] == best["anchor_acc"]


def test_the_guard_pass_is_counted_as_evaluation_and_without_memory_the_guard_says_so(forgetting_run,
                                                                                      digits_source, tmp_path):
    """The twin checkpoint without source memory, the same run: evaluation FLOPs differ by exactly
    the guard passes (100 anchors in the run's evaluation batches) at the baseline, the BatchNorm-
    adapted candidate and every validated epoch; training and validation are the same."""
    out = tmp_path / "bare-run"
    finetune(digits_source[1], DEVICE, TrainConfig(epochs=3, bn_adapt=200, max_forgetting=3.0, **FIXED), out,
             quiet=True)
    model, _ = load_checkpoint(digits_source[1])
    guard_pass = evaluation_flops(FlopCounter(model, [1, 8, 8]), 100, EVAL_BATCH)
    assert guard_pass > 0
    bare, guarded = records(out, baseline=True), records(forgetting_run, baseline=True)
    assert not any("anchor_acc" in r for r in bare) and not any(p.name in SOURCE_FILES for p in out.iterdir())

    def other_evaluation(r):        # the output model's own test pass depends on which model is kept
        return r["flops_eval"] - r.get("flops_anchor", 0) - r.get("kept_test_flops", 0)
    for b, g in zip(bare, guarded, strict=True):
        assert (b["val_acc"], b["flops_train"], other_evaluation(b)) == (g["val_acc"], g["flops_train"],
                                                                         other_evaluation(g))
        candidate = g["epoch"] == 0        # epoch 0 also carries the BatchNorm-adapted candidate's pass
        assert g["flops_anchor"] == (2 if candidate else 1) * guard_pass
        assert g["anchor_samples_evaluated"] == (2 if candidate else 1) * 100
    totals = summary(forgetting_run)["totals"]
    assert totals["flops_eval"] == sum(r["flops_eval"] for r in guarded)
    kept = summary(out)["kept"]
    assert kept["guard"] == "no anchor set" and kept["refused"] == [] and kept["rule"] == "best"
    assert "anchor_acc" not in summary(out)["output_model"]
    decision = decide(out, digits_source[1])            # promote: judged on validation alone, and says why
    assert decision.guard == "no anchor set" and decision.deployed_anchor_acc is None
    assert "anchor_samples" not in decision.evaluation and decision.rule == "better"


def test_promote_refuses_a_candidate_that_forgets_and_names_the_rule(lenient_run, digits_source, tmp_path):
    """The lenient run's output model (its best epoch, far below the source on the guard anchors)
    against the deployed source model: --max-forgetting 3 refuses it, exit 3, one line with both
    numbers; without the override the run's own limit lets it through (it beats the deployed model)."""
    deployed = tmp_path / "deployed"
    shutil.copytree(digits_source[0], deployed)
    out = summary(lenient_run)["output_model"]
    source = json.loads((deployed / "model.json").read_text())["source_memory"]["anchors"]["guard_acc"]
    result = run_cli("promote", lenient_run, "--deployed", deployed, "--max-forgetting", "3", expect=3)
    line, = result.output.strip().splitlines()
    assert line.startswith(f"not promoted (forgets): {lenient_run}: guard-anchor accuracy "
                           f"{100 * out['anchor_acc']:.2f}% is ")
    assert f"below the source model's {100 * source:.2f}% (--max-forgetting 3) and below the deployed model's " \
           f"{100 * source:.2f}%" in line and "100 guard anchors" in line
    record = journal.last_decision(lenient_run)
    model, _ = load_checkpoint(deployed)
    assert record["rule"] == "forgets" and record["promote"] is False and record["max_forgetting"] == 3
    assert record["evaluation"]["anchor_flops"] == evaluation_flops(FlopCounter(model, [1, 8, 8]), 100, EVAL_BATCH)
    assert record["deployed_anchor_acc"] == pytest.approx(source)
    assert all(torch.equal(a, b) for a, b in zip(tensors(deployed).values(), tensors(digits_source[0]).values()))
    decision = decide(lenient_run, deployed)
    assert decision.rule == "better" and decision.max_forgetting == json.loads(
        (lenient_run / "config.json").read_text())["max_forgetting"]


def test_promote_replaces_a_drifted_deployed_model_with_one_within_the_limit(forgetting_run, lenient_run, tmp_path):
    """Deployed: the lenient run's model (it forgot tens of points). Candidate: a run whose guard
    kept the starting (source) weights, worse on tonight's validation: `restores` deploys it."""
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    for name in ("model.safetensors", "model.json", *SOURCE_FILES):
        shutil.copy2(lenient_run / name, deployed / name)
    candidate, drifted = summary(forgetting_run)["output_model"], summary(lenient_run)["output_model"]
    assert candidate["val_acc"] < drifted["val_acc"]            # not-better on validation alone
    result = run_cli("promote", forgetting_run, "--deployed", deployed, "--force")
    line, = result.output.strip().splitlines()
    assert line.startswith(f"promoted (restores): {forgetting_run}: the deployed model has forgotten: guard-anchor "
                           f"accuracy {100 * drifted['anchor_acc']:.2f}%")
    assert f"the run's model is within it ({100 * candidate['anchor_acc']:.2f}%)" in line
    assert all(torch.equal(a, b) for a, b in zip(tensors(deployed).values(), tensors(forgetting_run).values()))


@pytest.mark.parametrize("missing", [["anchors.safetensors"], ["fisher.safetensors", "source.safetensors"]])
def test_a_checkpoint_missing_its_source_memory_is_refused_not_run_without_the_guard(digits_source, tmp_path, capsys,
                                                                                    missing):
    """Issue [hardening], item 8: with anchors.safetensors missing the guard was silently off (a
    truncated one was refused)."""
    from helpers import run_main
    copy = tmp_path / "warm"
    shutil.copytree(digits_source[0], copy)
    for name in missing:
        (copy / name).unlink()
    code, err = run_main(["finetune", "--checkpoint", copy, "--dataset", "digits", "--shard", "1/2", "--epochs", "1",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and err == (f"edge-sel: error: {copy / missing[0]}: missing, though the checkpoint ships its "
                                 f"source memory (anchor set, Fisher, source weights: the guard and the levers need "
                                 f"it); restore {', '.join(missing)} from where the checkpoint came from\n")
    assert not (tmp_path / "run").exists()


def test_a_bad_promote_limit_is_one_line_exit_2(tmp_path, capsys):
    code, err = run_main(["promote", tmp_path, "--deployed", tmp_path / "d", "--max-forgetting", "150"], capsys)
    assert code == 2 and err.strip() == "edge-sel: error: --max-forgetting must be <= 100, got 150.0"


def test_the_guard_judges_against_the_start_and_a_resumed_choice_is_the_same():
    """Numbers made up, no training: the source scored 90% on the guard anchors, the start had
    already lost 10 points. A candidate within 10 points of the source is allowed though it
    forgets more than P (it forgot less than the start); one below the start is refused. Each
    candidate's right/wrong on 100 validation images: the last (40%) is resolvably below epoch 0."""
    model = torch.nn.Linear(2, 2)
    steps = [(WARMUP_EPOCH, 0.50, 0.80), (BN_ADAPT_EPOCH, 0.55, 0.82), (0, 0.60, 0.85), (1, 0.70, 0.75),
             (2, 0.40, 0.80)]

    def right(val):
        return torch.arange(100) < round(100 * val)

    def choice():
        return ModelChoice("best", max_forgetting=3.0, has_anchors=True, source_anchor_acc=0.90)
    whole = choice()
    for epoch, val, anchors in steps:
        whole.consider(epoch, val, None, model, anchors, right(val))
    kept = whole.describe()
    assert (kept["kept"], kept["kept_epoch"], kept["rule"]) == ("best", 0, "forgets")
    assert [r["epoch"] for r in kept["refused"]] == [1] and kept["refused"][0]["anchor_forgetting"] == 15.0
    assert kept["reason"].startswith("epoch 1 would have been kept on validation (70.00%) but forgot: guard-anchor "
                                     "accuracy 75.00%, 15.00 points below the source model's 90.00% "
                                     "(--max-forgetting 3) and below the starting checkpoint's 80.00%; "
                                     "the output model is epoch 0")
    assert kept["guard"]["baseline_forgetting"] == 10.0 and kept["guard"]["kept_forgetting"] == 5.0
    # Cut after two candidates, resumed from the saved state (and from a state saved before the guard).
    for keep_new_fields in (True, False):
        first = choice()
        for epoch, val, anchors in steps[:3]:
            first.consider(epoch, val, None, model, anchors, right(val))
        state = first.state_dict()
        if not keep_new_fields:
            state = {k: state[k] for k in ("mode", "epoch", "val_acc", "test_acc", "baseline_val_acc",
                                           "baseline_test_acc", "last_epoch", "no_validation", "weights")}
        resumed = choice()
        resumed.load_state_dict(state)
        for epoch, val, anchors in steps[3:]:
            resumed.consider(epoch, val, None, model, anchors, right(val))
        if keep_new_fields:
            assert resumed.describe() == kept
        else:       # the baseline's anchor accuracy was not saved: the start is no bar, epochs 1 and 2 refused
            assert resumed.describe()["kept_epoch"] == 0 and resumed.describe()["rule"] == "forgets"
    # The BatchNorm-adapted model kept when every epoch forgets; no guard under --keep last.
    bn = choice()
    for epoch, val, anchors in [(WARMUP_EPOCH, 0.5, 0.9), (BN_ADAPT_EPOCH, 0.6, 0.89), (0, 0.9, 0.5)]:
        bn.consider(epoch, val, None, model, anchors)
    assert (bn.describe()["kept"], bn.describe()["rule"]) == ("bn_adapt", "forgets")
    assert "the output model is the starting checkpoint with re-estimated BatchNorm statistics" in bn.describe()["reason"]
    last = ModelChoice("last", 3.0, True, 0.9)
    last.consider(0, 0.9, None, model, 0.1)
    assert last.describe()["rule"] == "last" and last.describe()["guard"].startswith("not applied: --keep last")


def test_the_journal_line_shows_the_guard_anchors():
    import io
    stream = io.StringIO()
    ProgressLog(False, 3, stream).epoch({"epoch": 1, "val_acc": 0.958, "anchor_acc": 0.44, "anchor_forgetting": 54.0})
    assert "val 0.958 anchors 0.440 (-54.0 pt) test -" in stream.getvalue()


def test_a_device_sized_validation_makes_room_for_the_guard_anchors():
    """The guard anchors are part of every validation pass: they come out of the affordable samples."""
    from edge_sel.engine.loop.val_size import device_val_size
    from edge_sel.methods.presets import apply_preset
    from edge_sel.models import build_model
    cfg = apply_preset(TrainConfig(epochs=3, batch_size=64, bn_adapt=500, method={"preset": "adapt"},
                                   sparsity=None, strategy="dense"))
    flops = FlopCounter(build_model("edgecnn", 10, 3), [3, 32, 32])
    alone = device_val_size(cfg, "finetune", 45000, 5000, flops)
    guarded = device_val_size(cfg, "finetune", 45000, 5000, flops, guard_anchors=500)
    assert guarded["val_subset"] + guarded["guard_anchors_per_pass"] <= alone["val_subset"] == alone["affordable"]
    assert guarded["val_subset"] < alone["val_subset"] and 0 < guarded["guard_anchors_per_pass"] <= 500
    assert guarded["expected_validation_flops"] <= alone["expected_validation_flops"]


def test_keep_best_copies_what_can_move_over_its_last_copy_and_holds_it_without_a_second():
    """A fixed set's run keeps the set and the buffers alone, each better epoch written over the same
    tensors (before, a new copy of the whole state was made beside the old one: 13 MiB of Lite0 over a
    budget that counted none), and holding the kept state exchanges it with the model's in place."""
    from edge_sel.engine.evaluation.keep import load_kept
    from edge_sel.engine.loop.bank_passes import holding
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    choice = ModelChoice("best")
    choice.keys = {"2.weight", "2.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    choice.consider(WARMUP_EPOCH, 0.5, None, model, None, torch.arange(100) < 50)
    assert list(choice.weights) == [k for k in model.state_dict() if k in choice.keys]
    where = {k: v.data_ptr() for k, v in choice.weights.items()}
    with torch.no_grad():
        for t in model.state_dict().values():
            t.add_(1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    choice.consider(0, 0.6, None, model, None, torch.arange(100) < 60)
    assert {k: v.data_ptr() for k, v in choice.weights.items()} == where
    assert all(torch.equal(choice.weights[k], best[k]) for k in choice.keys)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.add_(1)
    choice.consider(1, 0.3, None, model, None, torch.arange(100) < 30)      # resolvably worse than epoch 0
    last = {k: v.clone() for k, v in model.state_dict().items()}
    kept = choice.weights_to_load()
    with holding(model, kept):
        now = model.state_dict()
        assert all(torch.equal(now[k], best[k] if k in choice.keys else last[k]) for k in now)
    assert all(torch.equal(model.state_dict()[k], last[k]) for k in last)
    assert all(torch.equal(kept[k], best[k]) for k in kept)
    load_kept(model, kept)
    assert all(torch.equal(model.state_dict()[k], best[k] if k in choice.keys else last[k]) for k in last)


def test_a_run_that_cannot_afford_validation_keeps_its_last_epoch_unless_a_decision_needs_it():
    """Lite0 at 96 px, one epoch of 500 images: 300 validation images twice cost 2.5 times the
    epoch's training. Such a run keeps its last epoch and validates none; a run of no epoch (its
    statistics are the decision), a guard over the source's anchors and a typed --keep best validate
    at the floor."""
    from types import SimpleNamespace
    from edge_sel.data import IndexedDataset
    from edge_sel.engine.loop.val_size import MIN_SAMPLES, validation_set
    from edge_sel.models import build_model

    def data(n):
        return IndexedDataset(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.arange(n) % 2, torch.arange(n),
                              ["a", "b"])
    model, train, val = build_model("edgecnn", 2, 3), data(20), data(1000)

    def decided(memory=None, **options):
        cfg = TrainConfig(**{"epochs": 1, "batch_size": 8, "val_share": 0.2, **options})
        subset, choice = validation_set(cfg, "finetune", train, val, model, memory)
        return cfg.keep, len(subset), choice["validates"]
    assert decided() == ("last", 0, False)
    assert decided(epochs=0) == ("best", MIN_SAMPLES, False)
    assert decided(memory=SimpleNamespace(guard=[])) == ("best", MIN_SAMPLES, False)
    assert decided(explicit=["keep"]) == ("best", MIN_SAMPLES, False)


def test_validation_is_a_share_of_the_step_the_run_trains_not_of_full_fine_tuning():
    """bn+classifier on Lite0 at 96 px validated 990 images a pass, sized to full fine-tuning's step,
    where its own step affords 657. Counted with the set's flags, which are put back after."""
    from edge_sel.core.flops import FlopCounter
    from edge_sel.engine.loop.val_size import device_val_size
    from edge_sel.models import build_model
    model = build_model("edgecnn", 10, 3)
    flops, cfg = FlopCounter(model, [3, 32, 32]), TrainConfig(epochs=3, batch_size=64, val_share=0.2)
    full = device_val_size(cfg, "finetune", 2000, 5000, flops)
    head = device_val_size(cfg, "finetune", 2000, 5000, flops, trains={"fc.weight", "fc.bias"})
    forward, backward = flops.train_step(64)
    assert head["expected_training_flops"] < full["expected_training_flops"] == 3 * 2000 * (forward + backward) // 64
    assert head["val_subset"] < full["val_subset"] and all(p.requires_grad for p in model.parameters())
