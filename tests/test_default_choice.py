"""A plain fine-tune chooses what trains, its BatchNorm statistics and its learning rate for itself
(engine/loop/default_choice.py): from the recipes a warmup ships (engine/loop/set_gains.py), else from
a counted trial on the device, else it trains everything as before and says why. A part the user
gives is kept; every choice is said in one line and kept in config.json."""

import json
import math

import pytest

from edge_sel.config import TrainConfig
from edge_sel.core.evidence import NEAR_POINTS
from edge_sel.engine.loop.set_gains import LR_GRID, marks
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from helpers import PINNED_CHOICES, SAME_CHOICES, records, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--dataset", "synthetic", "--epochs", "2", "--batch-size", "32", "--seed", "3", *SAME_CHOICES]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """An edgecnn warmup on synthetic data that ships its sets' recipes, 16 steps each, chosen and
    scored on 128 validation images."""
    out = tmp_path_factory.mktemp("shipped") / "ckpt"
    pretrain("edgecnn", DataOptions("synthetic", val_fraction=0.2), TrainConfig(epochs=1, batch_size=64,
                                                                                set_gains_steps=16, **PINNED_CHOICES),
             out, quiet=True)
    return out


def finetune(capsys, checkpoint, out, *extra):
    split = [] if "tiny-warm" in str(checkpoint) else ["--val-fraction", "0.2"]      # as the warmup's
    code, err = run_main(["finetune", "--checkpoint", checkpoint, *ARGS, *split, *extra, "--out", out], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    return config, [line for line in err.splitlines() if line.startswith("edge-sel: chose ")]


def test_the_checkpoint_ships_each_sets_recipes_at_every_mark(shipped):
    gains = json.loads((shipped / "model.json").read_text())["set_gains"]
    assert gains["steps"] == marks(16) and gains["lr_grid"] == list(LR_GRID)
    assert gains["images"].startswith("held out: 128 images of the pretrain's validation split")
    full = gains["sets"]["full FT"]
    assert {(r["bn_statistics"], r["lr"]) for r in full["recipes"]} == {
        (mode, lr) for mode in ("frozen", "train") for lr in LR_GRID}


def test_a_plain_fine_tune_names_its_choice_and_records_it(shipped, tmp_path, capsys):
    """No method, statistics or rate option: the set, its statistics and its rate come from the
    shipped recipes, by the rule: the fewest estimated joules among the candidates as good as the
    most expected (a deficit a paired test puts under NEAR_POINTS); one line says it and the runner-up,
    config.json keeps every candidate, and the run runs what was chosen; the output card names it."""
    config, (line,) = finetune(capsys, shipped, tmp_path / "run")
    choice = config["choice"]
    by_name = {c["name"]: c for c in choice["candidates"]}
    winner = by_name[choice["set"]]
    assert line.startswith(f"edge-sel: chose {choice['set']} (statistics ") and f"lr {winner['lr']:g}" in line
    assert (" by the recipes the checkpoint ships" in line or " by the device's race" in line) and (
        choice["runner_up"] is None or f"runner-up {choice['runner_up']}" in line)
    assert choice["source"].startswith("the recipes the checkpoint ships: accuracy on 64 of the server's validation "
                                       "images no step trained on, after ")
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
    trained = json.loads((tmp_path / "run" / "model.json").read_text())["training"]["trained"]
    assert trained["set"] == choice["set"] and trained["lr"] == winner["lr"] and trained["chosen_by"] == choice["decided_by"]
    assert trained["bn_statistics"] == statistics


def test_an_option_the_user_gives_is_kept_and_the_rest_chosen_around_it(shipped, tmp_path, capsys):
    config, _ = finetune(capsys, shipped, tmp_path / "lr", "--lr", "0.003")
    assert config["lr"] == 0.003 and {c["lr"] for c in config["choice"]["candidates"]} == {0.003}
    config, _ = finetune(capsys, shipped, tmp_path / "frozen", "--bn-stats", "frozen")
    assert config["bn_stats"] == "frozen"
    assert {c["bn_statistics"] for c in config["choice"]["candidates"]} == {"frozen"}
    # A rate off the recipes' grid is kept; the set and statistics are chosen by the recipes at theirs.
    config, (line,) = finetune(capsys, shipped, tmp_path / "off", "--lr", "0.02")
    assert config["lr"] == 0.02 and config["choice"]["lr_off_grid"] == 0.02 and "is off the recipes' grid: kept" in line


def test_a_named_set_runs_at_its_shipped_recipe_unless_the_user_names_that_too(shipped, tmp_path, capsys):
    """--sparsity classifier takes the statistics and rate the classifier's shipped recipe says (at the
    mark nearest the run), and one line says so; a rate or statistics the user gives stays theirs."""
    from edge_sel.core.checkpoint import read_card
    from edge_sel.engine.loop.set_gains import nearest_mark, recipe_at
    served = read_card(shipped).set_gains
    recipe = recipe_at(served, "classifier", nearest_mark(served, 32 * 32))      # 2 epochs of 16 steps
    code, err = run_main(["finetune", "--checkpoint", shipped, *ARGS, "--val-fraction", "0.2", "--sparsity",
                          "classifier", "--out", tmp_path / "set"], capsys)
    assert code == 0
    config = json.loads((tmp_path / "set" / "config.json").read_text())
    assert config["sparsity"] == "classifier" and config["lr"] == recipe["lr"]
    assert config["bn_stats"] == ("frozen" if recipe["bn_statistics"] == "frozen" else "reestimate")
    assert config["choice"]["named_by"] == "the user (--sparsity)"
    assert "--sparsity classifier runs at classifier's shipped recipe" in err
    code, err = run_main(["finetune", "--checkpoint", shipped, *ARGS, "--val-fraction", "0.2", "--sparsity",
                          "classifier", "--lr", "0.3", "--out", tmp_path / "own"], capsys)
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    assert code == 0 and config["lr"] == 0.3 and "lr " not in err.split("shipped recipe: ")[1].split("(")[0]


def test_every_night_chooses_by_the_warmups_recipes(shipped, tmp_path, capsys):
    """A fine-tune's output card keeps the warmup's recipes, marked as the warmup's: the next night
    (a fine-tune from that output) chooses by them, not by a fallback."""
    finetune(capsys, shipped, tmp_path / "night1")
    card = json.loads((tmp_path / "night1" / "model.json").read_text())
    assert card["set_gains"]["measured_on"].startswith("the warmup's weights")
    assert card["set_gains"]["sets"] == json.loads((shipped / "model.json").read_text())["set_gains"]["sets"]
    config, (line,) = finetune(capsys, tmp_path / "night1", tmp_path / "night2")
    assert config["choice"]["source"].startswith("the warmup's recipes: accuracy on 64")
    assert "ships no recipes" not in line


def test_a_warmup_without_recipes_chooses_by_a_counted_trial_or_says_why_it_did_not(tiny_warm, tmp_path, capsys):
    """No recipes shipped: a run long enough to pay two trials back tries the sets on its own images
    (counted in its first epoch's training FLOPs); a shorter one trains everything as before."""
    config, (line,) = finetune(capsys, tiny_warm, tmp_path / "short")
    assert config["sparsity"] == "none" and config["lr"] == 0.05 and config["choice"]["source"] is None
    assert "ships no recipes and 36 steps are too few to pay back two trials, so the prior: every parameter" in line
    config, (line,) = finetune(capsys, tiny_warm, tmp_path / "long", "--epochs", "20")
    choice = config["choice"]
    assert choice["source"].startswith("a trial of 8 steps on this device's images, accuracy on ") and \
        "by a trial of each on this device" in line
    tried = [c for c in choice["candidates"] if c["trial"]]
    assert len(tried) >= 2 and choice["set"] in {c["name"] for c in tried}
    assert config["lr"] == 0.01         # the trials' rate, where the run gives none
    first, *later = records(tmp_path / "long")
    assert first["memory_plan_trial_flops"] == choice["trial"]["trial_flops"] > 0
    assert not any("memory_plan_trial_flops" in r for r in later)         # charged once, not every epoch


def test_the_servers_trials_decay_their_rate_as_a_run_does():
    """A recipe's trial steps at the rate a run of as many steps would (a cosine decay), so that a set
    that gains from the decay (full fine-tuning with frozen statistics) is not measured behind."""
    import math

    import torch

    from edge_sel.core.flops import FlopCounter
    from edge_sel.core.memory import StepShape
    from edge_sel.data.dataset import IndexedDataset
    from edge_sel.engine.loop.trial_gain import TrialImages, run_trials
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
    images = TrialImages(IndexedDataset((x * 0).to(torch.uint8), y, torch.arange(8), ["a", "b"]), [0.0], [1.0],
                         torch.arange(8), x[:4], y[:4])
    run_trials(model, [c], images, optimizer, losses, 2, 4, FlopCounter(model, [1, 2, 2]), (), "cosine")
    assert seen == pytest.approx([0.02 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_the_command_lines_pretrain_sizes_its_recipes_to_its_data():
    """--set-gains-steps -1 (the default): as long, in images, as two epochs over the training split (a
    64-image server trained each recipe for some 30 passes over its images); a number given is kept;
    the engine's default ships none."""
    from edge_sel.engine.loop.set_gains import steps_for
    assert [steps_for(-1, n, 128) for n in (64, 400, 2000, 50000)] == [2, 7, 32, 782]
    assert steps_for(128, 400, 128) == 128 and TrainConfig().set_gains_steps == 0


def test_the_device_races_the_leaders_where_its_camera_is_not_the_servers(shipped, tmp_path, capsys):
    """Images the server never saw (a corrupted camera): the warmup scores resolvably below the server's
    figure on them (or they are far from its BatchNorm statistics), so the device races the leading
    shipped sets, in both statistics modes, on its own validation images, within a tenth of the run's
    estimated training; its figures decide only where they resolve (engine/loop/device_race.py)."""
    from edge_sel.engine.loop.device_race import RACE_SHARE
    config, (line,) = finetune(capsys, shipped, tmp_path / "camera", "--shift", "corrupt=gaussian_noise:5",
                               "--epochs", "24")
    confirmed = config["choice"]["confirmation"]
    assert confirmed["device_start_acc"] < confirmed["server_start_acc"]
    assert "its images are not the server's kind" in confirmed["asked"] and "the device checked because" in line
    # 24 epochs: a tenth of the run buys the racers the server's first mark, in the device's batches.
    racers = confirmed["racers"]
    gains = json.loads((shipped / "model.json").read_text())["set_gains"]
    first_mark = math.ceil(gains["steps"][0] * gains["rows"] / config["batch_size"])
    assert confirmed["raced"] and len(racers) >= 2 and confirmed["steps"] == first_mark
    reached = [r["reached"] for r in racers]          # the allowance may stop the last one short
    assert reached.count(first_mark) >= 2 and max(reached) == first_mark, racers
    prior = next(c for c in config["choice"]["candidates"] if c["name"] == racers[0]["name"])
    assert 0 < confirmed["allowance_s"] <= RACE_SHARE * prior["estimated_s"] + 0.006     # its estimate, rounded
    assert confirmed["kept"]
    first = records(tmp_path / "camera")[0]
    assert first["memory_plan_trial_flops"] >= confirmed.get("race_flops", 0)
    # The server's own kind of images: no distance to speak of; the margin is still noise, but a tenth of
    # two epochs buys no two racers the first mark, so there is no race (a step measures how a set starts).
    config, _ = finetune(capsys, shipped, tmp_path / "same")
    confirmed = config["choice"]["confirmation"]
    assert "not the server's kind" not in (confirmed["asked"] or "")
    assert not confirmed["raced"] and "first mark" in confirmed["kept"], confirmed
    assert config["choice"]["decided_by"] == "the recipes the checkpoint ships"
    # Another camera and no race: the server's figures rank sets on images unlike these, so the device
    # takes the prior for the warmup's kind (a warmup trained from scratch: every parameter re-estimated
    # at the run's rate), as a device without recipes does.
    config, (line,) = finetune(capsys, shipped, tmp_path / "camera-2", "--shift", "corrupt=gaussian_noise:5")
    choice = config["choice"]
    assert not choice["confirmation"]["raced"] and choice["confirmation"]["prior"]
    assert (choice["set"], choice["bn_statistics"], choice["lr"], choice["decided_by"]) == (
        "full FT", "train", TrainConfig().lr, "the prior")
    assert "as its camera is not the server's" in line
    assert (config["sparsity"], config["bn_stats"], config["lr"]) == ("none", "reestimate", TrainConfig().lr)


def test_a_camera_differs_where_its_distance_exceeds_the_servers_by_more_than_its_noise():
    """Lite0 at 96 px (benchmarks/distance_spread.py): 256 clean images lie at 0.138-0.142 (+-0.001-0.002)
    against the server's 0.1394, Gaussian noise 3 at 0.18, contrast 4 at 0.24; the old rule (twice the
    server's) told neither camera from the server's."""
    from edge_sel.engine.loop.device_race import farther
    assert not farther(0.1424, 0.0009, 0.1394, 0.0009)        # beyond its noise, but 2% of the distance: the same kind
    assert farther(0.1837, 0.0021, 0.1394, 0.0015) and farther(0.2359, 0.0025, 0.1394, 0.0015)
    assert not farther(0.20, 0.05, 0.1394, 0.0015)            # 20 images: no telling
    assert not farther(0.1837, None, 0.1394, 0.0015)
    # The distance itself: the Gaussians' divergence from the running statistics, over the whole draw,
    # and its error from the groups' spread.
    import torch

    from edge_sel.engine.loop.statistics_distance import distance_and_logits
    layer = torch.nn.BatchNorm2d(3, eps=0.0).eval()
    x = 0.5 + 2 * torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    distance, error, logits = distance_and_logits(torch.nn.Sequential(layer, torch.nn.Flatten()), x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    assert distance == pytest.approx(float((0.5 * (var + mean ** 2 - 1 - var.log())).mean()), abs=1e-4)
    assert distance == pytest.approx(0.5 * (4 + 0.25 - 1 - math.log(4)), rel=0.1) and 0 < error < 0.2
    assert logits.shape == (64, 48) and distance_and_logits(layer, x[:15])[1] is None     # under 2 a group


def test_a_race_displaces_the_servers_leader_only_where_its_images_resolve_it():
    import torch

    from edge_sel.engine.loop.device_race import displaces
    from edge_sel.engine.machine.joule_plan import Candidate

    def racer(right, n, joules):
        c = Candidate("x", set(), joules=joules)
        c.correct = torch.arange(n) < right
        c.gain = right / n
        return c

    def server(right, n):                   # the server's right/wrong at the same mark
        return torch.arange(n) < right
    tie = server(300, 512), server(300, 512)
    assert displaces(racer(120, 128, 50), racer(80, 128, 50), *tie)          # 31 points ahead on 128 images
    assert not displaces(racer(21, 40, 50), racer(20, 40, 50), *tie)         # one image of 40 ahead: noise
    assert not displaces(racer(20, 40, 10), racer(21, 40, 50), *tie)         # cheaper, one image behind: unresolved
    assert displaces(racer(1500, 2000, 10), racer(1500, 2000, 50), server(250, 512), server(300, 512))
    # ... as good for fewer joules where the server had it 10 points behind; the server's kind where not:
    assert not displaces(racer(2000, 2000, 10), racer(2000, 2000, 50), *tie)
    # The measured shape: bn+classifier led full FT by 7.6 points after 16 steps on the server's 512 images
    # (and trailed by 1.2 after 128). A device 7.8 points ahead on 256 ranks them as the server did: its
    # margin is the server's, the server's later marks stand. 30 points ahead: the camera ranks them otherwise.
    early = server(342, 512), server(303, 512)
    assert not displaces(racer(170, 256, 10), racer(150, 256, 20), *early)
    assert displaces(racer(170, 256, 10), racer(93, 256, 20), *early)
    assert not displaces(racer(170, 256, 10), racer(93, 256, 20), None, early[1])      # no figure at the mark
    # A set the band leaves out (not shown as good as the leader) contends until resolved behind it: on
    # a contrast camera the server's leader lost 10 points to a rival its 512 images could not separate.
    from edge_sel.engine.loop.default_choice import FITS
    from edge_sel.engine.loop.device_race import contends
    from edge_sel.engine.machine.joule_plan import OUTSIDE_BAND
    rival = racer(403, 512, 50)
    rival.count, rival.out = FITS, OUTSIDE_BAND
    assert contends(rival)
    rival.out = "does not fit the budget"
    assert not contends(rival)
    # A race goes to the server's first mark or does not run: two sets in both statistics modes, a second a
    # step and a second to score each; the old rule raced all four for (20 - 4) / 4 = 4 steps on 20 s.
    from dataclasses import replace

    from edge_sel.core.memory import StepShape
    from edge_sel.engine.loop.device_race import affordable
    entrants = []
    for name in ("full FT", "bn+classifier"):
        shipped = Candidate(name, set())
        shipped.shape = StepShape(32, bn_statistics="frozen")
        for mode in ("frozen", "train"):
            r = replace(shipped, shape=StepShape(32, bn_statistics=mode), step_s=1.0)
            r.shipped = shipped
            entrants.append(r)
    assert affordable(entrants, 68, 1.0, 16) == entrants
    assert [(r.name, r.shape.bn_statistics) for r in affordable(entrants, 34, 1.0, 16)] == \
        [("full FT", "frozen"), ("bn+classifier", "frozen")]
    assert affordable(entrants, 33, 1.0, 16) == affordable(entrants, 20, 1.0, 16) == []


def test_the_choices_source_says_which_images_scored_it_and_how_many():
    """A card whose recipes were scored on the server's training split (a writer before held-out
    scoring) is not called held-out accuracy."""
    from edge_sel.engine.loop.default_choice import source_words
    held = source_words({"images": "held out: 128 images of the pretrain's validation split", "held_out": 64,
                         "rows": 32}, 8)
    trained_on = source_words({"images": "the training split's first 40 images", "held_out": 40, "rows": 32,
                               "measured_on": "the warmup's weights"}, 8)
    assert held == ("the recipes the checkpoint ships: accuracy on 64 of the server's validation images no step "
                    "trained on, after 8 steps of 32")
    assert "40 of the server's training split (images its epochs trained on)" in trained_on
    assert trained_on.startswith("the warmup's recipes")
