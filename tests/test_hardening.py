"""Regressions found by using edge-sel as a new user would: presets, option checks, hardware paths
this machine never runs, split safety, disk errors, energy labels."""

import json
import sys

import pytest
import torch

from helpers import run_cli
from edge_sel.config import TrainConfig
from edge_sel.methods.presets import PRESETS, apply_preset

# The training options each preset's published recipe sets.
RECIPES = {
    "ast-prod": {"optimizer": "sgd", "lr": 0.005, "weight_decay": 1e-4, "label_smoothing": 0.0},
    "ast-two": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "label_smoothing": 0.1},
    "sel-95": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "schedule": "constant"},
    "warmup-sel": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64},
    "sel-v3": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64},
}


def test_every_preset_has_its_recipe_checked_here():
    assert set(PRESETS) == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_preset_sets_its_recipe_over_command_line_defaults(tiny_warm, tmp_path, name):
    out = tmp_path / "run"
    strategy = "sundew" if name.startswith("ast") else "sel"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0", "--strategy", strategy,
            "--preset", name, "--out", out, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in RECIPES[name]} == RECIPES[name]
    assert not config["method"].get("preset_notes")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_an_option_the_user_typed_wins_over_the_preset_and_is_noted(tiny_warm, tmp_path, name):
    out = tmp_path / "run"
    strategy = "sundew" if name.startswith("ast") else "sel"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0", "--strategy", strategy,
            "--preset", name, "--lr", "0.05", "--out", out, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.05 and any("kept lr=0.05" in n for n in config["method"]["preset_notes"])


def test_the_python_api_keeps_non_default_values_and_takes_the_preset_otherwise():
    cfg = apply_preset(TrainConfig(strategy="sundew", method={"preset": "ast-two"}))
    assert (cfg.optimizer, cfg.lr) == ("adamw", 1e-3)          # 0.05 was sgd's default, not a choice
    cfg = apply_preset(TrainConfig(strategy="sundew", lr=0.02, method={"preset": "ast-two"}))
    assert cfg.lr == 0.02
