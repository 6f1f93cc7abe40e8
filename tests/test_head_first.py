"""A pretrain from pretrained weights that trains its new head first (--head-epochs): the head stage
moves the classifier alone and leaves every other tensor and BatchNorm statistic as it was; its
records, FLOPs and joules stand beside the fine-tuning stage's."""

import json

import pytest
import torch

from edge_sel.config import TrainConfig
from edge_sel.core.records import read_records
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from edge_sel.models import build_model, load_checkpoint
from helpers import PINNED_CHOICES, run_main

pytestmark = pytest.mark.usefixtures("one_thread")


def _pretrain(out, weights, epochs, **extra):
    cfg = TrainConfig(epochs=epochs, head_epochs=1, head_lr=0.1, batch_size=64, lr=0.01, **PINNED_CHOICES, **extra)
    return pretrain("edgecnn", DataOptions("digits"), cfg, out, quiet=True, init_weights=weights)


def test_the_head_stage_moves_the_classifier_alone(tmp_path, start_weights):
    _pretrain(tmp_path / "run", start_weights, 0, anchors_per_class=0)
    before = torch.load(start_weights, weights_only=True)
    after = load_checkpoint(tmp_path / "run")[0].state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"]
    # BatchNorm's running statistics and step counts included: byte-identical
    assert any(k.endswith("running_var") for k in before)
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["stage"] for r in records] == ["head"]


def test_head_bn_adapt_re_estimates_the_statistics_and_nothing_else_but_the_head(tmp_path, start_weights):
    _pretrain(tmp_path / "run", start_weights, 0, anchors_per_class=0, head_bn_adapt=100)
    before = torch.load(start_weights, weights_only=True)
    after = load_checkpoint(tmp_path / "run")[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    statistics = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert changed - statistics == {"fc.bias", "fc.weight"} and {k for k in changed if "running_var" in k}
    head = read_records(tmp_path / "run" / "metrics.jsonl")[0]
    assert head["bn_adapt_samples"] == 100 and head["flops_bn_adapt"] > 0


def test_records_show_both_stages_and_the_totals_hold_both(tmp_path, start_weights):
    summary = _pretrain(tmp_path / "run", start_weights, 1, anchors_per_class=5, fisher_samples=64,
                        backbone_lr_scale=0.5)
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records] == [("head", 0), ("fine-tune", 0)]
    head, tune = records
    # No backbone gradient in the head stage: its backward is a small share of training everything's.
    assert 0 < head["flops_backward"] < tune["flops_backward"] / 20
    assert head["flops_forward"] == tune["flops_forward"]
    for total, key in (("flops_train", "flops_train"), ("train_wall_s", "wall_s"), ("energy_j", "energy_j")):
        assert summary["totals"][total] == pytest.approx(head[key] + tune[key])
    assert head["test_acc"] is not None and tune["test_acc"] is not None
    best = max(records, key=lambda r: r["val_acc"])
    assert (summary["best_val"]["epoch"], summary["best_val"]["stage"]) == (0, best["stage"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["head_epochs"], config["head_lr"], config["bn_momentum"], config["backbone_lr_scale"]) == \
        (1, 0.1, 0.1, 0.5)
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["training"]["head_epochs"] == 1 and card["training"]["epochs"] == 2
    assert card["source_memory"]["fisher"]       # what a warmup ships, as without a head stage


def test_the_backbone_trains_at_a_fraction_of_the_rate():
    from edge_sel.backends.torch_backend import make_optimizer
    from edge_sel.engine.runs.head_first import scale_backbone_lr
    model = build_model("edgecnn", 10, 1)
    optimizer = make_optimizer("sgd", model.parameters(), 0.01, 0.9, 5e-4)
    scale_backbone_lr(optimizer, model, 0.1)
    head, backbone = optimizer.param_groups
    assert [p is model.fc.weight or p is model.fc.bias for p in head["params"]] == [True, True]
    assert len(backbone["params"]) == len(list(model.parameters())) - 2 and backbone["lr_scale"] == 0.1
    assert (backbone["momentum"], backbone["weight_decay"]) == (0.9, 5e-4)


def test_a_bad_head_option_is_one_line(tmp_path, capsys):
    code, err = run_main(["pretrain", "--dataset", "digits", "--epochs", "1", "--bn-momentum", "0",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and "--bn-momentum" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
