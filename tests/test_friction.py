"""Issue [hardening] item 14, tried as a new user would: what the program says where it used to
mislead (the headline, a random head's guard, an input norm off the pixel range, a directory as
weights, --image-size's range) and what a run of no training no longer pays for."""

import json

import pytest
import torch

from edge_sel.config import TrainConfig
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.summary import flag_small_validation
from edge_sel.errors import InputError
from edge_sel.report.summary import all_in_line, results_said, small_validation_line
from helpers import run_cli, run_main

QUICK = ["--dataset", "digits", "--anchors-per-class", "0", "--quiet"]


def test_the_headline_is_the_model_handed_back_and_a_small_validation_is_flagged():
    summary = {"epochs_run": 3, "config": {"epochs": 3}, "final": {"test_acc": 0.953},
               "best_val": {"epoch": 1, "val_acc": 0.9},
               "output_model": {"weights": "best", "epoch": 1, "val_acc": 0.9, "test_acc": 0.828}}
    said = results_said(summary)
    assert "output model's test acc 0.828 (epoch 1; last epoch's 0.953)" in said and "final test acc" not in said
    # On few validation images the line says what the run did: kept the trained model where the
    # paired test could not tell, an earlier one only where the last was resolvably worse.
    kept = {"keep": "best", "kept": "best", "rule": "best", "overruled": [{"epoch": 2, "p": 0.001}]}
    out = flag_small_validation(summary["output_model"], kept, {"dataset": {"val_samples": 24}, "config": {}})
    assert out["could_not_tell"] is False and out["chosen_on_val_images"] == 24
    assert "validation held 24 images, and on them the last epoch was resolvably worse" in \
        small_validation_line({"output_model": out})
    trained = {"keep": "best", "kept": "last", "rule": "unresolved"}
    out = flag_small_validation({"weights": "last"}, trained, {"dataset": {"val_samples": 40}, "config": {}})
    assert out["could_not_tell"] and "the output model is the trained model, the last epoch" in \
        small_validation_line({"output_model": out})
    enough = flag_small_validation(summary["output_model"], kept, {"dataset": {"val_samples": 500}, "config": {}})
    last = flag_small_validation(summary["output_model"], {"keep": "last", "kept": "last", "rule": "last"},
                                 {"dataset": {"val_samples": 24}})
    assert "chosen_on_val_images" not in enough and "chosen_on_val_images" not in last


def test_the_all_in_line_says_what_the_shipped_anchors_and_fisher_took():
    summary = {"totals": {"flops_all": 3e9, "energy_all_j": 2993.0, "energy_j": 1500.0, "eval_energy_j": 161.0,
                          "energy_method": "measured"},
               "output_model": {"weights": "last", "test_acc": 0.5},
               "source_memory": {"flops": 1e9, "energy_j": 1332.0}}
    assert ", source memory 1332.0)" in all_in_line(summary)


def test_a_mean_outside_the_pixel_range_and_a_directory_as_weights_are_one_line(tmp_path, capsys):
    code, err = run_main(["pretrain", *QUICK, "--epochs", "0", "--input-norm", "300,0,0/1,1,1",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and "a mean outside the pixel range [0, 1]" in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "weights").mkdir()
    code, err = run_main(["pretrain", *QUICK, "--epochs", "0", "--init-weights", tmp_path / "weights",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and f"--init-weights {tmp_path / 'weights'}: a directory, not a weights file" in err, err
    assert not (tmp_path / "run").exists()


def test_image_size_has_one_range_and_pretrained_reads_as_a_value(tmp_path, capsys):
    for argv in (["pretrain", *QUICK, "--epochs", "0", "--out", tmp_path / "run"],
                 ["bench", "transfer", "--dataset", "digits", "--from-imagenet", "efficientnet_lite0",
                  "--out", tmp_path / "run"],
                 ["bench", "lifelong", "--dataset", "digits", "--out", tmp_path / "run"],
                 ["bench", "adapt", "--dataset", "digits", "--out", tmp_path / "run"]):
        code, err = run_main([*argv, "--image-size", "4"], capsys)
        assert code == 2 and "4 is not in the range 8<=x<=1024" in err, err
    text = run_cli("pretrain", "--help").output
    assert "--pretrained imagenet" in text and "--pretrained [imagenet]" not in text


def test_an_image_size_below_what_the_model_uses_is_warned():
    from edge_sel.models import build_model
    from edge_sel.models.input_size import warn_below_use
    model = build_model("efficientnet_lite0", 10, 3)
    with pytest.warns(UserWarning, match="--image-size 16: efficientnet_lite0 shrinks its input 32-fold"):
        warn_below_use(model, 16, "efficientnet_lite0")


def test_a_pretrain_of_no_epoch_probes_no_layout_and_flags_its_random_head(tmp_path):
    from edge_sel.engine.runs.run import pretrain
    cfg = TrainConfig(epochs=0, anchors_per_class=5, fisher_samples=32)
    with pytest.warns(UserWarning, match="--epochs 0: the classifier was never trained"):
        summary = pretrain("edgecnn", DataOptions("digits", subset=200, test_subset=50), cfg, tmp_path / "run",
                           quiet=True)
    assert summary["layout"]["source"] == "no training step: not measured" and summary["layout"]["probe_flops"] == 0
    assert summary["source_memory"]["anchors"]["random_head"] is True
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["source_memory"]["anchors"]["random_head"] is True


def test_the_layout_probe_runs_only_where_it_can_pay_back():
    from edge_sel.data.sources import load_synthetic
    from edge_sel.engine.machine.run_choices import probe_samples, run_layout
    from edge_sel.models import build_model
    train, _ = load_synthetic()             # a few hundred training images
    model = build_model("edgecnn", 4, 3)
    short = run_layout(TrainConfig(epochs=1, batch_size=64, eval_batch_size=64), model, train, 100,
                       torch.device("cpu"), "dense")
    assert probe_samples(64) > 0.1 * len(train)
    assert (short.memory_format, short.probe_flops) == ("contiguous", 0)
    assert short.source.startswith("not measured: the probe's 768 training samples are over a tenth")
    given = run_layout(TrainConfig(epochs=1, batch_size=64, eval_batch_size=64, memory_format="channels_last"),
                       model, train, 100, torch.device("cpu"), "dense")
    assert (given.memory_format, given.source) == ("channels_last", "given")
