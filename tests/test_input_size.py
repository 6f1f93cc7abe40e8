"""Issue [statistics]: a checkpoint of a globally pooled model fine-tunes at another --image-size (the
card says what it was trained at and which sizes run); a model that flattens a fixed-size feature map
is refused in one line before any image is decoded."""

import json

import pytest
import torch
from PIL import Image
from torch import nn

from edge_sel.config import TrainConfig
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from helpers import PINNED_CHOICES, run_main

pytestmark = pytest.mark.usefixtures("one_thread")


def make_flat(num_classes, in_channels=3):
    """A classifier on a flattened 8x8 map: it takes 16 px inputs and no others."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, num_classes))


def _folder(root, size=12):
    for c in range(4):          # the synthetic data's classes, at another size
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (size, size), (60 * c, 20 * i, 0)).save(root / f"class{c}" / f"{i}.png")
    return root


def _finetune(checkpoint, root, size, out):
    return ["finetune", "--checkpoint", checkpoint, "--dataset", f"folder:{root}", "--image-size", str(size),
            "--val-fraction", "0.25", "--epochs", "1", "--batch-size", "4", "--memory-format", "contiguous",
            "--precision", "fp32", "--eval-batch-size", "8", "--out", out, "--quiet"]


def test_a_pooled_checkpoint_fine_tunes_at_another_size_and_says_so(tiny_warm, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path / "cache"))
    card = json.loads((tiny_warm / "model.json").read_text())
    assert card["input_shape"] == [3, 16, 16]
    assert card["training"]["input_sizes"] == {"trained_at": [16, 16], "any_size": True, "smallest": 8,
                                               "largest": 1024}
    code, err = run_main(_finetune(tiny_warm, _folder(tmp_path / "images"), 24, tmp_path / "run"), capsys)
    assert code == 0, err
    tuned = json.loads((tmp_path / "run" / "model.json").read_text())
    assert tuned["input_shape"] == [3, 24, 24] and tuned["training"]["input_sizes"]["trained_at"] == [24, 24]


def test_a_fixed_size_model_is_refused_before_any_image_is_decoded(tmp_path, capsys, monkeypatch):
    pretrain(f"{__file__}:make_flat", DataOptions("synthetic"),
             TrainConfig(epochs=0, anchors_per_class=0, **PINNED_CHOICES), tmp_path / "warm", quiet=True)
    card = json.loads((tmp_path / "warm" / "model.json").read_text())
    assert card["training"]["input_sizes"] == {"trained_at": [16, 16], "any_size": False}

    def never(*a, **k):
        raise AssertionError("the data were loaded")
    monkeypatch.setattr(DataOptions, "load", never)
    code, err = run_main(_finetune(tmp_path / "warm", _folder(tmp_path / "images"), 24, tmp_path / "run"), capsys)
    assert (code, err) == (2, f"edge-sel: error: --image-size 24: the checkpoint {tmp_path / 'warm'} takes 16x16 "
                              f"images only (its model does not pool globally before its classifier); pass "
                              f"--image-size 16\n")
    assert not (tmp_path / "run").exists()
