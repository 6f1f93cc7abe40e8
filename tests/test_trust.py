"""A checkpoint is data: rebuilding its model never runs code the user did not choose."""

import json
import shutil

import pytest

from helpers import run_main
from edge_sel.models.spec import TRUST_ENV

pytestmark = pytest.mark.usefixtures("one_thread")

FINETUNE = ["--dataset", "digits", "--shard", "1/2", "--epochs", "1", "--quiet", "--batch-size", "64"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    from helpers import digits_warmup_with_memory
    return digits_warmup_with_memory(tmp_path_factory.mktemp("trust") / "warm")


def test_a_card_that_names_importable_code_is_refused_unless_trusted(warm, tmp_path, capsys, monkeypatch):
    """Before: a model.json naming torch.hub:load with a local repo ran that repo's hubconf.py on
    finetune (with source github it would fetch code)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "ran"
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(warm, ckpt)
    card = json.loads((ckpt / "model.json").read_text())
    card["model"] = {"name": "torch.hub:load", "kind": "import",
                     "kwargs": {"repo_or_dir": str(repo), "model": "anything", "source": "local"}}
    (ckpt / "model.json").write_text(json.dumps(card))
    monkeypatch.setenv(TRUST_ENV, "0")      # and back to as it was after the test, whatever the CLI set
    for command in (["finetune", "--checkpoint", ckpt, "--out", tmp_path / "run", *FINETUNE],
                    ["predict", "--checkpoint", ckpt, tmp_path / "repo"],
                    ["export", "--checkpoint", ckpt, "--out", tmp_path / "art"]):
        code, err = run_main(command, capsys)
        assert code == 2 and "torch.hub:load" in err and "--trust-model-code" in err, err
        assert len(err.strip().splitlines()) == 1 and not marker.exists()
    # Trusted (the option here; the variable works the same), the card's code runs.
    run_main(["--trust-model-code", "finetune", "--checkpoint", ckpt, "--out", tmp_path / "run", *FINETUNE], capsys)
    assert marker.exists()


def test_a_model_file_changed_since_pretraining_is_not_imported(tmp_path, capsys, monkeypatch):
    """Before: the file's SHA-256 was recorded and never compared; appended code ran."""
    monkeypatch.setenv(TRUST_ENV, "0")      # and back to as it was after the test, whatever the CLI set
    factory = tmp_path / "mine.py"
    factory.write_text("from edge_sel.models import EdgeCNN\n\n"
                       "def build(num_classes, in_channels=3):\n    return EdgeCNN(num_classes, in_channels)\n")
    code, err = run_main(["pretrain", "--model", f"{factory}:build", "--dataset", "digits", "--shard", "0/2",
                          "--epochs", "1", "--out", tmp_path / "ckpt", "--quiet", "--anchors-per-class", "0"], capsys)
    assert code == 0, err
    recorded = json.loads((tmp_path / "ckpt" / "model.json").read_text())["model"]["file_sha256"]
    marker = tmp_path / "ran"
    with open(factory, "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('appended code ran')\n")
    code, err = run_main(["finetune", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "run", *FINETUNE], capsys)
    assert code == 2 and str(factory) in err and recorded in err and "changed" in err, err
    assert not marker.exists()


def test_a_night_keeps_no_bank_for_batchnorm_without_running_statistics(tmp_path, capsys, monkeypatch):
    """Before: the night turned the bank on for any model with BatchNorm layers and then refused
    layers that keep no running statistics: every night failed (exit 2) for a bank nobody asked for."""
    monkeypatch.setenv(TRUST_ENV, "0")
    factory = tmp_path / "stateless.py"
    factory.write_text("from torch import nn\n\n"
                       "def build(num_classes, in_channels=1):\n"
                       "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1),\n"
                       "                         nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),\n"
                       "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    home = tmp_path / "home"
    code, err = run_main(["pretrain", "--model", f"{factory}:build", "--dataset", "digits", "--shard", "0/2",
                          "--epochs", "1", "--out", home / "warmup", "--quiet", "--anchors-per-class", "10",
                          "--fisher-samples", "50"], capsys)
    assert code == 0, err
    code, err = run_main(["night", "--home", home, "--warmup", home / "warmup", "--dataset", "digits",
                          "--shard", "1/2", "--epochs", "1", "--quiet"], capsys)
    assert code == 0, err
    run = next((home / "runs").iterdir())
    assert json.loads((run / "summary.json").read_text())["config"]["bn_conditions"] == 0
