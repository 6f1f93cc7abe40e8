"""A plain fine-tune chooses what trains, its BatchNorm statistics and its learning rate for itself
(engine/loop/default_choice.py): from the recipes a warmup ships (engine/loop/set_gains.py), else from
a counted trial on the device, else it trains everything as before and says why. A part the user
gives is kept; every choice is said in one line and kept in config.json."""

import json

import pytest

from edge_sel.config import TrainConfig
from edge_sel.engine.loop.set_gains import LR_GRID
from edge_sel.engine.machine.joule_plan import NEAR_POINTS
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from helpers import PINNED_CHOICES, SAME_CHOICES, records, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--dataset", "synthetic", "--epochs", "2", "--batch-size", "32", "--seed", "3", *SAME_CHOICES]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """An edgecnn warmup on synthetic data that ships its sets' recipes, 16 steps each."""
    out = tmp_path_factory.mktemp("shipped") / "ckpt"
    pretrain("edgecnn", DataOptions("synthetic"), TrainConfig(epochs=1, batch_size=64, set_gains_steps=16,
                                                              **PINNED_CHOICES), out, quiet=True)
    return out


def finetune(capsys, checkpoint, out, *extra):
    code, err = run_main(["finetune", "--checkpoint", checkpoint, *ARGS, *extra, "--out", out], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    return config, [line for line in err.splitlines() if line.startswith("edge-sel: chose ")]


def test_the_checkpoint_ships_each_sets_recipes_at_every_mark(shipped):
    gains = json.loads((shipped / "model.json").read_text())["set_gains"]
    assert gains["steps"] == [8, 16] and gains["lr_grid"] == list(LR_GRID)
    assert gains["images"].startswith("held out: the pretrain's validation split")
    full = gains["sets"]["full FT"]
    assert {(r["bn_statistics"], r["lr"]) for r in full["recipes"]} == {
        (mode, lr) for mode in ("frozen", "train") for lr in LR_GRID}
    for i in range(2):        # each mark's figures are its best recipe's
        assert full["acc"][i] == max(r["acc"][i] for r in full["recipes"])


def test_a_plain_fine_tune_names_its_choice_and_records_it(shipped, tmp_path, capsys):
    """No method, statistics or rate option: the set, its statistics and its rate come from the
    shipped recipes, by the rule: the fewest estimated joules among the candidates as good as the
    most expected (within NEAR_POINTS and one paired standard error); one line says it and the
    runner-up, config.json keeps every candidate, and the run runs what was chosen."""
    config, (line,) = finetune(capsys, shipped, tmp_path / "run")
    choice = config["choice"]
    by_name = {c["name"]: c for c in choice["candidates"]}
    winner = by_name[choice["set"]]
    assert line.startswith(f"edge-sel: chose {choice['set']} (statistics ") and f"lr {winner['lr']:g}" in line
    assert "by the recipes the checkpoint ships" in line and (choice["runner_up"] is None or f"runner-up {choice['runner_up']}" in line)
    assert choice["source"].startswith("shipped: the server's held-out accuracy after 16 steps")
    best = max(c["trial"]["held_out_acc"] for c in by_name.values())
    timed = [c for c in by_name.values() if c["estimated_s"] is not None and not c["out"]]
    assert winner in timed and best - winner["trial"]["held_out_acc"] <= NEAR_POINTS + 0.1
    assert all(c["estimated_s"] >= winner["estimated_s"] or c["trial"]["held_out_acc"] < best - NEAR_POINTS
               for c in timed if c is not winner) or choice["reason"].startswith("the most expected gain")
    # The run ran what was chosen, and says so everywhere.
    assert config["lr"] == winner["lr"] and config["sparsity"] == {
        "classifier": "classifier", "bn+classifier": "bn-affine", "bias+bn+classifier": "bias-norm",
        "last-2": "last-k", "full FT": "none"}[choice["set"]]
    statistics = "frozen" if winner["bn_statistics"] == "frozen" else "reestimate"
    assert config["bn_stats"] == statistics and {r["bn_stats"] for r in records(tmp_path / "run")} == {statistics}
    first = records(tmp_path / "run")[0]
    assert first["choice_wall_s"] > 0       # in the first epoch's wall time, not in its rate of training
    assert first["samples_per_s"] == pytest.approx(first["backward_samples"] / (first["wall_s"] - first["choice_wall_s"]))


def test_an_option_the_user_gives_is_kept_and_the_rest_chosen_around_it(shipped, tmp_path, capsys):
    config, _ = finetune(capsys, shipped, tmp_path / "lr", "--lr", "0.003")
    assert config["lr"] == 0.003 and {c["lr"] for c in config["choice"]["candidates"]} == {0.003}
    config, _ = finetune(capsys, shipped, tmp_path / "frozen", "--bn-stats", "frozen")
    assert config["bn_stats"] == "frozen"
    assert {c["bn_statistics"] for c in config["choice"]["candidates"]} == {"frozen"}
    config, said = finetune(capsys, shipped, tmp_path / "set", "--sparsity", "classifier")
    assert said == [] and config["choice"] is None and config["sparsity"] == "classifier" and config["lr"] == 0.05


def test_a_warmup_without_recipes_chooses_by_a_counted_trial_or_says_why_it_did_not(tiny_warm, tmp_path, capsys):
    """No recipes shipped: a run long enough to pay two trials back tries the sets on its own images
    (counted in its first epoch's training FLOPs); a shorter one trains everything as before."""
    config, (line,) = finetune(capsys, tiny_warm, tmp_path / "short")
    assert config["sparsity"] == "none" and config["lr"] == 0.05 and config["choice"]["source"] is None
    assert "ships no recipes and 36 steps are too few to pay back two trials" in line
    config, (line,) = finetune(capsys, tiny_warm, tmp_path / "long", "--epochs", "20")
    choice = config["choice"]
    assert choice["source"].startswith("a trial of 8 steps on this device's images") and "by a trial of each on this device" in line
    tried = [c for c in choice["candidates"] if c["trial"]]
    assert len(tried) >= 2 and choice["set"] in {c["name"] for c in tried}
    assert config["lr"] == 0.01         # the trials' rate, where the run gives none
    first = records(tmp_path / "long")[0]
    assert first["memory_plan_trial_flops"] == choice["trial"]["trial_flops"] > 0


def test_the_servers_trials_decay_their_rate_as_a_run_does():
    """A recipe's trial steps at the rate a run of as many steps would (a cosine decay), so that a set
    that gains from the decay (full fine-tuning with frozen statistics) is not measured behind."""
    import math

    import torch

    from edge_sel.core.flops import FlopCounter
    from edge_sel.core.memory import StepShape
    from edge_sel.engine.loop.trial_gain import run_trials
    from edge_sel.engine.machine.joule_plan import Candidate
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    seen = []

    def optimizer(params, lr=0.1):
        opt = torch.optim.SGD(params, lr=lr)
        real = opt.step
        opt.step = lambda: seen.append(opt.param_groups[0]["lr"]) or real()
        return opt
    c = Candidate("all", {n for n, _ in model.named_parameters()}, lr=0.02)
    c.shape = StepShape(2)
    x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,))
    losses = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")
    run_trials(model, [c], (x, y, x[:4], y[:4]), optimizer, losses, 2, 4, FlopCounter(model, [1, 2, 2]), (), "cosine")
    assert seen == pytest.approx([0.02 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_the_command_lines_pretrain_sizes_its_recipes_to_its_data():
    """--set-gains-steps -1 (the default): two epochs over as many images as the training split, as a
    power of two from 16 to 64 steps; a number given is kept; the engine's default ships none."""
    from edge_sel.engine.loop.set_gains import steps_for
    assert [steps_for(-1, n, 128) for n in (400, 2000, 5000, 50000)] == [16, 32, 64, 64]
    assert steps_for(128, 400, 128) == 128 and TrainConfig().set_gains_steps == 0
