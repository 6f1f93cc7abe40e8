"""The fast paths change speed, never results: deferred host reads, memory layout, evaluation
schedule. Speed itself is measured side by side in benchmarks/bench_loop.py, not here."""

from __future__ import annotations

import pytest
import torch

from edge_sel.config import TrainConfig
from edge_sel.data import load_source, make_splits
from edge_sel.engine.machine.device import seed_everything
from edge_sel.engine.machine import layout
from edge_sel.engine.machine.layout import choose_layout, has_conv
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.methods import Strategy, Updater
from edge_sel.models import build_model
from helpers import records, run_cli

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


def make_trainer(**overrides) -> Trainer:
    train, test = load_source("synthetic")
    splits = make_splits(train, test, subset=640, val_fraction=0.1)
    # fp32 given: these tests compare runs to float32 rounding (bf16 is tests/test_precision.py's)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 16, "lr": 0.02, "seed": 1, "memory_format": "contiguous",
                         "eval_batch_size": 256, "precision": "fp32", **overrides})
    seed_everything(1)
    model = build_model("edgecnn", train.num_classes, train.input_shape[0])
    mean, std = splits.train.channel_stats()
    return Trainer(cfg, splits, model, mean, std, torch.device("cpu"), seed_everything(1), Strategy(), Updater(),
                   quiet=True)


def count_host_reads_per_step(trainer: Trainer, monkeypatch) -> list[int]:
    """Host reads (Tensor.item, .tolist, bool(), int(), float(), .cpu(), .numpy()) made inside each
    training step of one epoch."""
    inside = {"on": False, "n": 0}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, __original=original, **k):
            if inside["on"]:
                inside["n"] += 1
            return __original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    per_step = []
    step = trainer._train_step

    def counted_step(*a):
        inside["on"], inside["n"] = True, 0
        try:
            step(*a)
        finally:
            inside["on"] = False
            per_step.append(inside["n"])
    monkeypatch.setattr(trainer, "_train_step", counted_step)
    trainer.train_epoch(1)
    return per_step


def test_the_step_reads_the_host_only_every_k_steps(monkeypatch):
    trainer = make_trainer(sync_every=8)
    trainer.train_epoch(0)                  # first-use work (FLOP counting, kernel choice) out of the way
    per_step = count_host_reads_per_step(trainer, monkeypatch)
    steps = len(per_step)
    assert steps == 36
    # One read (the stacked sums) on every 8th step, none on the others.
    assert [i + 1 for i, n in enumerate(per_step) if n] == list(range(8, steps + 1, 8))
    assert max(per_step) == 1


def test_per_step_reads_are_the_cpu_default(monkeypatch):
    trainer = make_trainer()
    assert trainer.sync_every == 1
    trainer.train_epoch(0)
    assert count_host_reads_per_step(trainer, monkeypatch) == [1] * 36


def test_deferred_reads_give_the_same_epoch():
    every = make_trainer(sync_every=1)
    deferred = make_trainer(sync_every=7)
    a, b = every.train_epoch(0), deferred.train_epoch(0)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)
    assert a["train_acc"] == b["train_acc"] and a["optimizer_steps"] == b["optimizer_steps"] == 36
    for p, q in zip(every.model.parameters(), deferred.model.parameters()):
        assert torch.equal(p, q)


def test_channels_last_trains_the_same_model():
    plain = make_trainer(memory_format="contiguous")
    nhwc = make_trainer(memory_format="channels_last")
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    a, b = plain.train_epoch(0), nhwc.train_epoch(0)
    # Another kernel order, so not bit-identical: the same training to float32 rounding.
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.02)
    for p, q in zip(plain.model.parameters(), nhwc.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4)


def test_auto_layout_is_measured_on_a_copy_and_recorded():
    model = build_model("edgecnn", 10, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice = choose_layout(model, (3, 32, 32), 10, torch.device("cpu"), 32, max_eval_batch=300)
    assert choice.source == "measured" and choice.memory_format in ("channels_last", "contiguous")
    assert set(choice.train_s_per_step) == {"channels_last", "contiguous"}
    # channels_last where it is clearly faster (MARGIN), the fastest evaluation batch among those
    # that fit the largest set.
    t = choice.train_s_per_step
    assert choice.memory_format == ("channels_last" if t["channels_last"] < layout.MARGIN * t["contiguous"]
                                    else "contiguous")
    assert set(choice.eval_images_per_s) == {128, 256}
    assert choice.eval_batch_size == max(choice.eval_images_per_s, key=choice.eval_images_per_s.get)
    assert choice.probe_flops > 0 and choice.probe_wall_s > 0
    for k, v in model.state_dict().items():      # BatchNorm statistics included
        assert torch.equal(v, before[k]) and v.is_contiguous()
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    assert not has_conv(mlp)
    assert choose_layout(mlp, (3, 2, 2), 3, torch.device("cpu"), 8, eval_batch_size=64).memory_format == "contiguous"


def test_given_layout_and_eval_batch_skip_the_measurement():
    choice = choose_layout(build_model("edgecnn", 10, 3), (3, 32, 32), 10, torch.device("cpu"), 32,
                           memory_format="channels_last", eval_batch_size=500)
    assert (choice.memory_format, choice.eval_batch_size, choice.source) == ("channels_last", 500, "given")
    assert choice.probe_flops == 0 and not choice.train_s_per_step


def test_eval_every_and_test_at_the_end(tiny_warm, tmp_path):
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "4", "--batch-size", "32",
            "--eval-every", "2", "--val-subset", "40", "--quiet", "--out", tmp_path / "run")
    recs = records(tmp_path / "run")
    assert [r["evaluated"] for r in recs] == ["none", "val", "none", "val+test"]
    assert [r["val_samples_evaluated"] for r in recs] == [0, 40, 0, 40]
    assert recs[0]["val_acc"] is None and recs[0]["flops_eval"] == 0 and recs[1]["test_acc"] is None
    assert recs[3]["test_samples_evaluated"] > 0 and recs[3]["flops_eval"] > recs[1]["flops_eval"] > 0
    base = records(tmp_path / "run", baseline=True)[0]
    assert base["evaluated"] == "val+test"      # the starting checkpoint: the bar on both sets


def test_eval_test_every_tests_after_each_validation(tiny_warm, tmp_path):
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "2", "--batch-size", "32",
            "--eval-test", "every", "--quiet", "--out", tmp_path / "run")
    assert [r["evaluated"] for r in records(tmp_path / "run")] == ["val+test", "val+test"]


@pytest.mark.parametrize("option, value", [("--eval-every", "0"), ("--sync-every", "-1"), ("--val-subset", "-3"),
                                           ("--eval-batch-size", "-1")])
def test_bad_speed_options_are_one_line_errors(tiny_warm, tmp_path, option, value):
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                     option, value, "--out", tmp_path / "run", expect=2)
    assert option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
