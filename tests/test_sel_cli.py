"""`edge-sel finetune --strategy sel` end to end: digits (always) and a CIFAR-10 subset (when the
shared data is present). Records carry stage, gate, embarrassment, sparsity and counted FLOPs."""

import json

import pytest

from conftest import CIFAR_JPEG, needs_cifar
from helpers import records, run_cli, summary
from edge_sel.cli import main


@pytest.fixture(scope="module")
def digits_warmup(tmp_path_factory):
    out = tmp_path_factory.mktemp("selwarm") / "ckpt"
    run_cli("pretrain", "--dataset", "digits", "--epochs", 2, "--batch-size", 64, "--shard", "0/2",
            "--out", out, "--quiet")
    return out


def finetune(ckpt, out, *extra, epochs=5, dataset="digits"):
    return run_cli("finetune", "--checkpoint", ckpt, "--dataset", dataset, "--shard", "1/2", "--epochs", epochs,
                   "--out", out, "--quiet", *extra)


def config(run):
    return json.loads((run / "config.json").read_text())


def check_sel_records(recs, classes):
    for r in recs:
        for key in ("stage", "stage_gate", "stage_threshold", "grad_sparsity", "params_updated_frac",
                    "flops_backward", "flops_forward", "val_acc", "sparsity_kind"):
            assert key in r, key
        for c in classes:
            assert r[f"E_{c}"] is not None and r[f"C_{c}"] == pytest.approx(max(0.0, 1 - r[f"E_{c}"]))
        assert r["strategy"] == "sel" and r["backward_samples"] < r["samples_available"]
        assert 0 < r["params_updated_frac"] <= 1 and r["flops_backward"] > 0


def test_sel_default_runs_every_stage_with_layer_freezing(digits_warmup, tmp_path):
    run = tmp_path / "sel"
    finetune(digits_warmup, run, "--strategy", "sel", "--batch-size", 32, "--probe-every", 4)
    cfg = config(run)
    assert cfg["sparsity"] == "layers"                     # the sel default when --sparsity is not given
    recs = records(run)
    check_sel_records(recs, [str(d) for d in range(10)])
    assert [r["stage"] for r in recs] == [1, 2, 3, 4, 5]   # 5 epochs: one per stage, all visited
    assert all(r["stage_gate"] in ("pass", "fail") for r in recs)
    assert [r["stage_threshold"] for r in recs] == [0.3, 0.45, 0.58, 0.68, 0.76]
    assert recs[0]["difficulty"] == "warmup"
    # The warmup checkpoint scored every training sample once: a counted scoring pass.
    assert recs[0]["flops_scoring"] > 0 and recs[0]["scoring_samples"] == recs[0]["samples_available"]
    assert all(r["flops_scoring"] == 0 for r in recs[1:])
    for r in recs:
        assert r["sparsity_kind"] == "structured" and r["compute_saved_by_sparsity"] is True
        assert 0 < r["frozen_frac"] <= 0.5 and r["grad_sparsity"] == r["frozen_frac"]
    assert summary(run)["totals"]["flops_scoring"] == recs[0]["flops_scoring"]


def test_sel95_preset_masks_updates_without_saving_compute(digits_warmup, tmp_path):
    dense, sel = tmp_path / "dense", tmp_path / "sel95"
    finetune(digits_warmup, dense, "--batch-size", 64, "--epochs", 2)
    finetune(digits_warmup, sel, "--strategy", "sel", "--preset", "sel-95", epochs=3)
    cfg = config(sel)
    assert (cfg["sparsity"], cfg["optimizer"], cfg["lr"], cfg["schedule"], cfg["batch_size"],
            cfg["weight_decay"]) == ("mask", "adam", 1e-3, "constant", 64, 0.0)
    assert cfg["method"]["difficulty"] == "cold" and cfg["method"]["stage_gates"] is False
    recs = records(sel)
    check_sel_records(recs, [str(d) for d in range(10)])
    for r in recs:
        assert r["sparsity_kind"] == "update" and r["compute_saved_by_sparsity"] is False
        assert r["grad_sparsity"] > 0
        assert r["stage_gate"] in ("pass", "fail")           # recorded, never acted on
    # The mask saves nothing: per trained sample the backward pass costs what dense costs.
    d = records(dense)[0]
    per_sample = [(r["flops_backward"] / r["backward_samples"]) for r in recs]
    assert per_sample == pytest.approx([d["flops_backward"] / d["backward_samples"]] * len(recs), rel=0.05)
    # The calibration step on the untrained twin is charged to the first epoch.
    first = recs[0]
    assert first["flops_calibration"] > 0
    assert first["flops_train"] == (first["flops_forward"] + first["flops_backward"] + first["flops_scoring"]
                                    + first["flops_calibration"])
    assert "flops_calibration" not in recs[1]


def test_warmup_sel_starts_with_a_dense_easy_stage(digits_warmup, tmp_path):
    run = tmp_path / "wsel"
    finetune(digits_warmup, run, "--preset", "warmup-sel", epochs=3)
    recs = records(run)
    assert recs[0]["stage"] == 0 and recs[0]["grad_sparsity"] == 0.0
    assert [r["stage"] for r in recs[1:]] == [1, 2]         # 3 of 55 table epochs: the first stages
    assert recs[1]["grad_sparsity"] > 0
    # 20% of each class pool at most: the easy warmup is a small slice of the shard.
    assert recs[0]["backward_samples"] <= 0.2 * recs[0]["samples_available"] + 10


def test_sel_with_class_focus_and_explicit_dense_updater(digits_warmup, tmp_path):
    run = tmp_path / "focus"
    finetune(digits_warmup, run, "--strategy", "sel", "--class-focus", "--sparsity", "none", "--epochs", 3,
             "--difficulty", "random", "--stages", "0-50:-:1,50-100:-:2")
    assert config(run)["sparsity"] == "none"
    recs = records(run)
    assert [r["stage"] for r in recs] == [1, 2, 2] and recs[0]["difficulty"] == "random"
    assert recs[0]["flops_scoring"] == 0                     # the random order needs no scorer
    assert all(sum(r["class_budget"]) == r["backward_samples"] for r in recs)


@pytest.mark.parametrize("args,message", [
    (["--strategy", "sel", "--difficulty", "hardest"], "'--difficulty': 'hardest' is not one of"),
    (["--strategy", "sel", "--stages", "0-25:2"], "--stages"),
    (["--strategy", "sel", "--layer-sparsity", "1.5"], "--layer-sparsity"),
    (["--preset", "sel-95", "--strategy", "random"], "--preset sel-95: needs --strategy sel"),
    (["--preset", "sel-96"], "'--preset': 'sel-96' is not one of"),
])
def test_bad_sel_options_are_one_line_errors(digits_warmup, tmp_path, capsys, monkeypatch, args, message):
    argv = ["edge-sel", "finetune", "--checkpoint", str(digits_warmup), "--epochs", "1",
            "--out", str(tmp_path / "bad"), *args]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
@needs_cifar()
def test_sel_on_a_cifar10_subset(tmp_path):
    from edge_sel.core.checkpoint import ModelCard, save_checkpoint
    from edge_sel.data import load_source
    from edge_sel.models import build_model
    train, _ = load_source(f"folder:{CIFAR_JPEG}")
    ckpt = tmp_path / "untrained"
    # An untrained edgecnn stands in for a warmup checkpoint: this tests the path, not accuracy.
    save_checkpoint(ckpt, build_model("edgecnn", 10, 3),
                    ModelCard("edgecnn", 10, train.class_names, train.input_shape, [0.49, 0.48, 0.45],
                              [0.25, 0.24, 0.26]))
    run = tmp_path / "cifar-sel"
    run_cli("finetune", "--checkpoint", ckpt, "--dataset", f"folder:{CIFAR_JPEG}", "--shard", "1/2",
            "--subset", 1000, "--val-fraction", 0.02, "--epochs", 2, "--strategy", "sel", "--probe-every", 4,
            "--out", run, "--quiet")
    recs = records(run)
    check_sel_records(recs, train.class_names)
    assert [r["stage"] for r in recs] == [1, 2] and recs[0]["samples_available"] == 1000
    assert all(r["sparsity_kind"] == "structured" and r["frozen_frac"] > 0 for r in recs)
