"""What a pretrain ships as each set's gain from its weights (engine/loop/set_gains.py): measured at
every mark, counted in the run's totals, the weights left as they were, and a received card whose
gains are not readable refused in one line. How a planner reads them: tests/test_joule_plan.py."""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import SAME_CHOICES, run_main
from edge_sel.core.checkpoint import ModelCard
from edge_sel.engine.loop.set_gains import marks, nearest_mark, packed, unpacked
from edge_sel.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_pretrain_ships_each_sets_gain_at_every_mark_and_leaves_its_weights(tmp_path, capsys):
    argv = ["pretrain", "--model", "edgecnn", "--dataset", "synthetic", "--epochs", "0", "--batch-size", "32",
            "--anchors-per-class", "0", *SAME_CHOICES, "--quiet"]
    code, _ = run_main([*argv, "--out", tmp_path / "plain"], capsys)
    code2, _ = run_main([*argv, "--set-gains-steps", "20", "--out", tmp_path / "gains"], capsys)
    assert code == code2 == 0
    plain, measured = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "gains"))
    assert all(torch.equal(plain[k], measured[k]) for k in plain)      # every set trained on a copy
    card = json.loads((tmp_path / "gains" / "model.json").read_text())
    gains = card["set_gains"]
    assert gains["steps"] == marks(20) == [8, 16, 20] and gains["rows"] == 32 and gains["held_out"] > 0
    assert {"classifier", "bias+bn+classifier", "last-2", "full FT", "lite-residual+bias"} <= set(gains["sets"])
    # edgecnn's convolutions have no bias: one set under two names, trained once.
    both = gains["sets"]["bias+bn+classifier"], gains["sets"]["bn+classifier"]
    assert both[0]["same_set_as"] == "bn+classifier" and both[0]["acc"] == both[1]["acc"]
    for measured_set in gains["sets"].values():
        assert len(measured_set["acc"]) == 3
        for acc, bits in zip(measured_set["acc"], measured_set["correct"]):
            assert float(unpacked(bits, gains["held_out"]).float().mean()) == pytest.approx(acc, abs=1e-4)
    assert ModelCard.from_json(card, tmp_path).set_gains == gains
    summary = json.loads((tmp_path / "gains" / "summary.json").read_text())
    without = json.loads((tmp_path / "plain" / "summary.json").read_text())
    # The passes are in the all-in totals: 5 fixed sets and the branches, 20 steps each, and the marks' scoring.
    assert summary["totals"]["flops_all"] - without["totals"]["flops_all"] == summary["set_gains"]["flops"] > 0
    assert "set_gains" not in json.loads((tmp_path / "plain" / "model.json").read_text())


def test_a_card_whose_set_gains_are_unreadable_is_refused():
    card = {"architecture": "edgecnn", "num_classes": 2, "class_names": ["a", "b"], "input_shape": [3, 8, 8],
            "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    good = {"steps": [8], "rows": 4, "held_out": 9, "sets": {"classifier": {"tensors": 2, "acc": [0.5],
                                                                             "correct": [packed(torch.arange(9) < 5)]}}}
    assert ModelCard.from_json({**card, "set_gains": good}, "m.json").set_gains == good
    for bad in ({**good, "steps": [0]}, {**good, "held_out": 20},
                {**good, "sets": {"classifier": {**good["sets"]["classifier"], "acc": [1.5]}}}, [1, 2]):
        with pytest.raises(InputError, match="set_gains must give"):
            ModelCard.from_json({**card, "set_gains": bad}, "m.json")


def test_a_run_reads_the_mark_nearest_the_images_it_trains_on():
    shipped = {"steps": [8, 16, 32, 64], "rows": 32}
    assert [shipped["steps"][nearest_mark(shipped, n)] for n in (10, 300, 700, 1500, 10**6)] == [8, 8, 16, 64, 64]


def test_torchrun_refuses_set_gains_that_rank_0_would_measure_alone():
    from edge_sel.config import TrainConfig
    from edge_sel.engine.runs.ddp import RankSync
    RankSync.refuse_unsupported(TrainConfig(), None, None)
    with pytest.raises(InputError, match="--set-gains-steps: not supported under torchrun"):
        RankSync.refuse_unsupported(TrainConfig(set_gains_steps=8), None, None)
