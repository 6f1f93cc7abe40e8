"""A pretrain from pretrained weights chooses its recipe by the data (engine/runs/recipe.py): on few
images a linear probe for the whole epoch budget; on many, everything from the first step; what was
chosen is said and recorded."""

import json

import pytest
import torch

from edge_sel.config import TrainConfig
from edge_sel.core.records import read_records
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.recipe import SMALL_DATA, choose_recipe
from edge_sel.engine.runs.run import pretrain
from edge_sel.errors import InputError
from edge_sel.models import load_checkpoint
from helpers import PINNED_CHOICES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_few_images_are_a_linear_probe_for_the_epoch_budget(tmp_path, start_weights, capsys):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01, anchors_per_class=0, **PINNED_CHOICES)
    summary = pretrain("edgecnn", DataOptions("digits", subset=300, test_subset=100), cfg, tmp_path / "run",
                       init_weights=start_weights)
    assert "recipe: a linear probe (300 training images, fewer than" in capsys.readouterr().err
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["stage"] for r in records] == ["head", "head"]            # 2 epochs in all, as asked
    before = torch.load(start_weights, weights_only=True)
    after = load_checkpoint(tmp_path / "run")[0].state_dict()
    assert sorted(k for k in before if not torch.equal(before[k], after[k])) == ["fc.bias", "fc.weight"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["name"] == "probe" and summary["config"]["recipe"] == "probe"
    assert (config["head_epochs"], config["epochs"], config["head_lr"]) == (2, 0, 0.1)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["training"]["recipe"] == "probe"


def test_many_images_or_full_or_options_typed_train_everything_from_the_start():
    for images, asked in ((SMALL_DATA, "auto"), (100, "full")):
        cfg = TrainConfig(epochs=3, recipe=asked)
        record, _ = choose_recipe(cfg, images, transfer=True)
        assert record["name"] == "full" and (cfg.head_epochs, cfg.epochs, cfg.bn_mode) == (0, 3, None)
    cfg = TrainConfig(epochs=3, head_epochs=1)
    assert choose_recipe(cfg, 100, transfer=True)[0]["name"] == "given" and cfg.epochs == 3
    assert choose_recipe(TrainConfig(epochs=3), 100, transfer=False)[0]["name"] == "full"
    assert choose_recipe(TrainConfig(epochs=3), 100, transfer=True, distributed=True)[0]["name"] == "full"
    with pytest.raises(InputError, match="--recipe probe: a linear probe needs pretrained"):
        choose_recipe(TrainConfig(epochs=3, recipe="probe"), 100, transfer=False)
