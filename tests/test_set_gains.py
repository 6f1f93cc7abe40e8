"""What a pretrain ships as each set's recipes from its weights (engine/loop/set_gains.py): chosen on
one half of validation images no step trained on and scored on the other, halved at every mark,
bounded by its allowance, a stop signal and --energy-budget, counted in the run's totals, the weights
left as they were, and a received card whose gains are not readable refused in one line. How a device
reads them: tests/test_default_choice.py and tests/test_joule_plan.py."""
import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import SAME_CHOICES, run_main
from edge_sel.core.checkpoint import ModelCard
from edge_sel.data.dataset import IndexedDataset
from edge_sel.engine.loop.recipe_orders import averaged
from edge_sel.engine.loop.set_gains import marks, nearest_mark, packed, recipe_at, unpacked
from edge_sel.engine.loop.trial_gain import trial_images
from edge_sel.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

PRETRAIN = ["pretrain", "--model", "edgecnn", "--dataset", "synthetic", "--batch-size", "32", "--anchors-per-class",
            "0", "--val-fraction", "0.2", *SAME_CHOICES, "--quiet"]


def test_a_pretrain_ships_each_sets_recipes_halved_at_every_mark_and_leaves_its_weights(tmp_path, capsys):
    code, _ = run_main([*PRETRAIN, "--epochs", "0", "--out", tmp_path / "plain"], capsys)
    code2, _ = run_main([*PRETRAIN, "--epochs", "0", "--set-gains-steps", "20", "--out", tmp_path / "gains"], capsys)
    assert code == code2 == 0
    plain, measured = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "gains"))
    assert all(torch.equal(plain[k], measured[k]) for k in plain)      # every set trained on a copy
    card = json.loads((tmp_path / "gains" / "model.json").read_text())
    gains = card["set_gains"]
    assert gains["steps"] == marks(20) == [3, 5, 10, 20] and gains["rows"] == 32
    # Scored on validation images no step trained on: one half chooses each recipe, the other scores it.
    assert gains["images"].startswith("held out: 128 images of the pretrain's validation split")
    assert gains["held_out"] == gains["chosen_on"] == 64
    assert {"classifier", "bias+bn+classifier", "last-2", "full FT", "lite-residual+bias"} <= set(gains["sets"])
    # edgecnn's convolutions have no bias: one set under two names, trained once.
    both = gains["sets"]["bias+bn+classifier"], gains["sets"]["bn+classifier"]
    assert both[0]["same_set_as"] == "bn+classifier" and both[0]["acc"] == both[1]["acc"]
    full = gains["sets"]["full FT"]
    # Successive halving: six recipes start, two go on after the first mark, one after the second.
    reached = sorted(len(r["acc"]) for r in full["recipes"])
    assert reached == [1, 1, 1, 1, 2, 4] and sum("dropped_at" in r for r in full["recipes"]) == 5
    for i in range(4):      # at each mark the figures are those of the recipe the choosing half ranks first
        alive = [r for r in full["recipes"] if len(r["acc"]) > i]
        best = max(alive, key=lambda r: (r["select_acc"][i], -r["lr"]))
        assert full["acc"][i] == best["acc"][i] and full["correct"][i] == best["correct"][i]
        lo, hi = full["interval"][i]
        assert lo <= full["acc"][i] <= hi
    for measured_set in gains["sets"].values():
        assert len(measured_set["acc"]) == 4
        for acc, bits in zip(measured_set["acc"], measured_set["correct"]):
            assert float(unpacked(bits, gains["held_out"]).float().mean()) == pytest.approx(acc, abs=1e-4)
    # The leader and the sets its paired test cannot put behind it train their chosen recipe in two more data
    # orders: at the last mark a device reads each image's share of the orders right, and their mean.
    assert gains["orders"]["count"] == 3 and 1 <= len(gains["orders"]["sets"]) <= 3
    for name in gains["orders"]["sets"]:
        chosen = max((r for r in gains["sets"][name]["recipes"] if len(r["acc"]) == 4),
                     key=lambda r: (r["select_acc"][3], -r["lr"]))
        orders = chosen["orders"]
        assert orders["acc"][0] == chosen["acc"][3] and orders["correct"][0] == chosen["correct"][3]
        assert len(orders["acc"]) == 3 and orders["mean"] == pytest.approx(sum(orders["acc"]) / 3, abs=1e-4)
        read = recipe_at(gains, name, 3)
        assert read["acc"] == orders["mean"] and read["orders_correct"] == orders["correct"]
        share = averaged(read, gains["held_out"])
        assert float(share.mean()) == pytest.approx(orders["mean"], abs=1e-4)
        assert torch.allclose(share * 3, (share * 3).round(), atol=1e-5)      # each image right in 0-3 orders
        assert recipe_at(gains, name, 2)["acc"] == chosen["acc"][2]        # the marks before: one trial
    assert ModelCard.from_json(card, tmp_path).set_gains == gains
    summary = json.loads((tmp_path / "gains" / "summary.json").read_text())
    without = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["totals"]["flops_all"] - without["totals"]["flops_all"] == summary["set_gains"]["flops"] > 0
    assert "set_gains" not in json.loads((tmp_path / "plain" / "model.json").read_text())


def test_the_recipes_train_only_on_the_training_split_and_score_only_validation_images():
    """No image a trial's steps train on is one it is scored on: the steps cycle through the training
    split, the scores are taken on the validation split's images."""
    def images(value, n):
        return IndexedDataset(torch.full((n, 3, 4, 4), value, dtype=torch.uint8), torch.arange(n) % 2,
                              torch.arange(n), ["a", "b"])
    train, val = images(10, 40), images(200, 30)
    got = trial_images(train, [0.0] * 3, [1.0] * 3, 8, 10, seed=1, held_out=20, held_ds=val)
    assert len(got.held_y) == 20 and torch.allclose(got.held_x, torch.full_like(got.held_x, 200 / 255))
    assert got.train.max() < len(train) and torch.allclose(got.batch(3, 8)[0], torch.full((8, 3, 4, 4), 10 / 255))


def test_a_server_with_too_few_held_out_images_ships_no_recipes_and_says_why(tmp_path, capsys):
    code, err = run_main([*PRETRAIN[:-1], "--epochs", "0", "--val-fraction", "0.05", "--set-gains-steps", "8",
                          "--out", tmp_path / "few"], capsys)
    assert code == 0 and "ships no recipes for devices: 32 validation images, fewer than the 100" in err
    assert "set_gains" not in json.loads((tmp_path / "few" / "model.json").read_text())
    assert json.loads((tmp_path / "few" / "summary.json").read_text())["set_gains"]["none"].startswith("32 validation")


def test_an_energy_budget_bounds_a_pretrains_recipes(tmp_path, capsys):
    """--energy-budget holds inside the recipes: they stop before the budget would be passed, and what
    finished ships marked partial (or nothing, and says so)."""
    code, _ = run_main([*PRETRAIN, "--epochs", "1", "--set-gains-steps", "64", "--energy-budget", "25",
                        "--out", tmp_path / "budget"], capsys)
    assert code == 0
    summary = json.loads((tmp_path / "budget" / "summary.json").read_text())
    gains = summary["set_gains"]
    why = gains.get("partial") or gains.get("none")
    assert "--energy-budget of 25 J" in why
    # What ships reads back as a device reads it: no recipe beyond the marks every set reached.
    card = json.loads((tmp_path / "budget" / "model.json").read_text())
    assert ModelCard.from_json(card, tmp_path).set_gains == card.get("set_gains")
    assert summary["totals"]["energy_all_j"] <= 25 * 1.1       # at most one trial step past it


def test_a_stop_signal_stops_a_pretrains_recipes_within_a_step(tmp_path):
    """SIGTERM while the recipes run: the checkpoint is whole, the recipes stop at once (not after the
    grid), ship marked partial or not at all, and the pretrain exits 143."""
    out = tmp_path / "stopped"
    argv = [sys.executable, "-m", "edge_sel", *PRETRAIN[:-1], "--epochs", "0", "--set-gains-steps", "400",
            "--out", str(out)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "held-out accuracy at its recipes" in line:
            break
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "the checkpoint is written; recipes" in stdout
    gains = json.loads((out / "summary.json").read_text())["set_gains"]
    assert "stop signal" in (gains.get("partial") or gains.get("none"))
    card = json.loads((out / "model.json").read_text())
    assert ModelCard.from_json(card, out).set_gains == card.get("set_gains")
    # 27 recipes of 400 steps would train 345,600 images halved; it stopped within its first mark's.
    assert gains["trial_images_trained"] < 27 * marks(400)[0] * 32
    assert (out / "model.safetensors").is_file()


CARD = {"architecture": "edgecnn", "num_classes": 2, "class_names": ["a", "b"], "input_shape": [3, 8, 8],
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}}


def shipped_gains(held=9):
    """Set gains as a pretrain ships them: two marks, two sets, each with its recipes."""
    bits = [packed(torch.arange(held) < 5), packed(torch.arange(held) < 6)]
    recipe = lambda mode, lr: {"lr": lr, "bn_statistics": mode, "acc": [0.5, 0.6], "correct": bits}
    one_set = lambda tensors: {"tensors": tensors, "bn_statistics": "frozen", "lr": 0.01, "acc": [0.5, 0.6],
                               "correct": bits, "recipes": [recipe("frozen", 0.01), recipe("train", 0.03)]}
    return {"steps": [8, 16], "rows": 4, "optimizer": "sgd", "lr": 0.05, "lr_grid": [0.01, 0.03], "held_out": held,
            "sets": {"classifier": one_set(2), "full FT": one_set(14)}}


def changed(gains, change):
    gains = json.loads(json.dumps(gains))
    change(gains)
    return gains


def recipes(change):
    """Applies `change` to every recipe of every set."""
    return lambda g: [change(r) for v in g["sets"].values() for r in v["recipes"]]


UNREADABLE = [
    # Recipes without their learning rates stopped a run with a TypeError; empty accuracies, an IndexError.
    (recipes(lambda r: r.pop("lr")), "set_gains.sets['classifier'].recipes[0].lr must be a finite number above 0, "
                                      "got None"),
    (recipes(lambda r: r.update(lr=None)), ".recipes[0].lr must be a finite number above 0, got None"),
    (recipes(lambda r: r.update(lr=float("nan"))), ".recipes[0].lr must be a finite number above 0, got nan"),
    (recipes(lambda r: r.update(acc=[], correct=[])), ".recipes[0].acc must be a list of 1 to 2 accuracies, got []"),
    (recipes(lambda r: r.update(bn_statistics="eval")), ".recipes[0].bn_statistics must be frozen or train"),
    (recipes(lambda r: r.update(correct=["zz", "zz"])), ".recipes[0].correct[0] must be 2 bytes in hex"),
    (recipes(lambda r: r.update(interval=[[0.9, 0.1], None])), ".recipes[0].interval[0] must be null or [low, high]"),
    (recipes(lambda r: r.update(dropped_at=-1)), ".recipes[0].dropped_at must be a whole number of steps"),
    (lambda g: g["sets"]["full FT"].update(recipes={"lr": 0.01}), "set_gains.sets['full FT'].recipes must be a list"),
    (lambda g: g["sets"]["full FT"].update(tensors=True), "set_gains.sets['full FT'].tensors must be a whole number"),
    (lambda g: g["sets"]["full FT"].update(acc=[0.5, 1.5]), "set_gains.sets['full FT'].acc[1] must be a finite number "
                                                            "from 0 to 1, got 1.5"),
    (lambda g: g["sets"]["full FT"].update(lr="fast"), "set_gains.sets['full FT'].lr must be"),
    (lambda g: g.update(steps=[0]), "set_gains.steps must be a list of whole numbers above 0, increasing"),
    (lambda g: g.update(steps=[16, 8]), "set_gains.steps must be"),
    (lambda g: g.update(held_out=20), "set_gains.sets['classifier'].correct[0] must be 3 bytes in hex"),
    (lambda g: g.update(rows=0), "set_gains.rows must be a whole number above 0"),
    (lambda g: g.update(start_acc="high"), "set_gains.start_acc must be a finite number from 0 to 1"),
    (lambda g: g.update(bn_distance=float("nan")), "set_gains.bn_distance must be a finite number from 0"),
    (lambda g: g.update(bn_distance_se=-0.1), "set_gains.bn_distance_se must be a finite number from 0"),
    (lambda g: g.update(lr_grid=[0.01, float("inf")]), "set_gains.lr_grid[1] must be a finite number above 0"),
    (lambda g: g.update(lr=-1), "set_gains.lr must be a finite number above 0 or null"),
    (lambda g: g.update(partial=3), "set_gains.partial must be a string or true/false"),
    (lambda g: g.update(measured_on=["x"]), "set_gains.measured_on must be a string"),
    (lambda g: g.update(sets=[1, 2]), "set_gains.sets must be a mapping of set names"),
]


@pytest.mark.parametrize("change, says", UNREADABLE, ids=[says.split(" must")[0] for _, says in UNREADABLE])
def test_a_card_whose_set_gains_are_unreadable_is_refused_naming_the_field(change, says):
    good = shipped_gains()
    assert ModelCard.from_json({**CARD, "set_gains": good}, "m.json").set_gains == good
    with pytest.raises(InputError, match="^m.json: not an edge-sel model card \\(") as refused:
        ModelCard.from_json({**CARD, "set_gains": changed(good, change)}, "m.json")
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_newer_fields_are_read_where_sane_and_a_recipe_dropped_early_counts_where_it_reached():
    """Fields a newer writer adds (partial, measured_on, interval, select_acc, dropped_at) are accepted
    and never required; a recipe dropped after the first mark is read at that mark and not beyond."""
    from edge_sel.engine.loop.set_gains import recipe_at
    newer = changed(shipped_gains(), lambda g: (
        g.update(partial="stopped by --time-budget", measured_on="the warmup's weights"),
        g["sets"]["classifier"]["recipes"][1].update(acc=[0.9], correct=g["sets"]["classifier"]["correct"][:1],
                                                     interval=[[0.8, 0.95]], select_acc=[0.9], dropped_at=8)))
    card = ModelCard.from_json({**CARD, "set_gains": newer}, "m.json")
    assert card.set_gains == newer
    assert recipe_at(newer, "classifier", 0)["lr"] == 0.03 and recipe_at(newer, "classifier", 1)["lr"] == 0.01
    # A search stopped before every set reached a mark ships no recipe's figures past the marks all reached.
    from types import SimpleNamespace
    from edge_sel.engine.loop.set_gains import recipe_figures
    right = torch.arange(8) < 5
    further = SimpleNamespace(lr=0.01, shape=SimpleNamespace(bn_statistics="frozen"), correct=None,
                              trial={"marks": [{"steps": 2, "correct": right}, {"steps": 4, "correct": right}]})
    assert len(recipe_figures(further, torch.arange(8) % 2 == 0, 1)["acc"]) == 1


def test_a_finetune_from_a_card_whose_recipes_lack_their_rates_is_one_line_exit_2(tiny_warm, tmp_path, capsys):
    """The whole command: refused in one line before anything is written, where it was a TypeError."""
    import shutil
    checkpoint = tmp_path / "received"
    shutil.copytree(tiny_warm, checkpoint)
    card = json.loads((checkpoint / "model.json").read_text())
    card["set_gains"] = changed(shipped_gains(), recipes(lambda r: r.pop("lr")))
    (checkpoint / "model.json").write_text(json.dumps(card))
    code, err = run_main(["finetune", "--checkpoint", checkpoint, "--dataset", "synthetic", "--epochs", "1",
                          "--memory-budget", "40", "--out", tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{checkpoint / 'model.json'}: not an edge-sel model card (set_gains.sets['classifier'].recipes[0].lr " in err
    assert not (tmp_path / "run").exists()


def test_a_run_reads_the_mark_nearest_the_images_it_trains_on():
    shipped = {"steps": [8, 16, 32, 64], "rows": 32}
    assert [shipped["steps"][nearest_mark(shipped, n)] for n in (10, 300, 700, 1500, 10**6)] == [8, 8, 16, 64, 64]


def test_torchrun_refuses_set_gains_that_rank_0_would_measure_alone():
    from edge_sel.config import TrainConfig
    from edge_sel.engine.runs.ddp import RankSync
    RankSync.refuse_unsupported(TrainConfig(), None, None)
    with pytest.raises(InputError, match="--set-gains-steps: not supported under torchrun"):
        RankSync.refuse_unsupported(TrainConfig(set_gains_steps=8), None, None)
