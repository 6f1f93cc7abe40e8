"""Bring your own model: a model defined here (not registered) pretrains, fine-tunes with every
strategy and updater family, resumes exactly after SIGKILL, exports to ONNX and trains in the ORT
backend (an operator ORT cannot train is refused by name), and is rebuilt from its checkpoint card
alone; the GroupNorm model's --bn-adapt is a stated no-op; MobileNetV2's blocks follow the
documented rule; the Python API page's example runs."""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import read_card, read_weights
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune, pretrain
from edge_sel.errors import InputError
from helpers import PINNED_CHOICES, SAME_CHOICES, needs_ort, records, run_cli, run_main, stable

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
# No layout or precision measurement: it would time both layouts for every new model (a few seconds
# each), and a probe that chose bf16 in one process and fp32 in another (a loaded CPU's step time
# drops the cached choice) made the in-process reference and the resumed subprocess two different runs.
FAST = dict(**PINNED_CHOICES, batch_size=32, checkpoint_every=0)
FAST_CLI = [*SAME_CHOICES, "--quiet"]


class PlainNet(nn.Module):
    """Conv-BN-ReLU twice and a linear head: every operator has an ORT gradient."""

    def __init__(self, num_classes, in_channels=1, width=8, act=nn.ReLU):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), act())
        self.body = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), act())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def make_plain(num_classes, width=8):
    return PlainNet(num_classes, 1, width)


def make_hardswish(num_classes):
    return PlainNet(num_classes, 1, 4, act=nn.Hardswish)


SPEC = f"{__file__}:make_plain"


@pytest.fixture(scope="module")
def warm(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("byo") / "warm"
    pretrain(SPEC, DataOptions("digits", shard="0/2", subset=160), TrainConfig(epochs=1, **FAST), out, quiet=True,
             model_args={"width": 6})
    return out


def test_the_card_records_the_spec_and_finetune_rebuilds_the_model_from_it_alone(warm, tmp_path):
    card = json.loads((warm / "model.json").read_text())
    assert card["model"]["name"] == f"{Path(__file__).resolve()}:make_plain"
    assert card["model"]["kind"] == "file" and card["model"]["kwargs"] == {"width": 6}
    assert len(card["model"]["file_sha256"]) == 64
    run_cli("finetune", "--checkpoint", warm, "--dataset", "digits", "--shard", "1/2", "--subset", 64,
            "--epochs", 1, "--out", tmp_path / "ft", *FAST_CLI)
    assert read_weights(tmp_path / "ft")["body.0.weight"].shape == (12, 6, 3, 3)   # width 6 again
    assert read_card(tmp_path / "ft").model == card["model"]


UPDATERS = [("dense", "none", {}), ("sel", "layers", {"stages": "0-50::1", "probe_every": 2}),
            ("sundew", "mask", {"target_activation": 0.5}), ("dihcl", "rgn", {"dih_warm": 0, "probe_every": 2}),
            ("infobatch", "bn-affine", {}), ("random", "layers", {"target_activation": 0.5, "blocks": "stem,head"})]


def test_every_strategy_and_updater_family_trains_the_unregistered_model(warm, tmp_path):
    for strategy, sparsity, method in UPDATERS:
        cfg = TrainConfig(epochs=1, **FAST, strategy=strategy, sparsity=sparsity, method=dict(method))
        summary = finetune(warm, DataOptions("digits", shard="1/2", subset=96), cfg, tmp_path / f"{strategy}-{sparsity}",
                           quiet=True)
        rec = records(tmp_path / f"{strategy}-{sparsity}")[-1]
        assert rec["strategy"] == strategy and rec["backward_samples"] > 0 and rec["flops_backward"] > 0, rec
        assert summary["totals"]["flops_eval"] > 0
        if sparsity in ("layers", "rgn", "bn-affine"):
            assert rec["sparsity_kind"] == "structured" and rec["compute_saved_by_sparsity"] is True
        if sparsity == "bn-affine":      # BatchNorm affine and the discovered head train: 2 x 6 + 2 x 12 + 130
            assert rec["frozen_frac"] == pytest.approx(1 - (12 + 24 + 130) / (54 + 12 + 648 + 24 + 130))
        if method.get("blocks"):         # --blocks stem,head: two blocks, the head trained at the probe
            assert len(rec["block_guilt"]) == 2
        if sparsity == "mask":
            assert rec["sparsity_kind"] == "update" and rec["grad_sparsity"] > 0


def test_pretrain_of_the_unregistered_model_resumes_exactly_after_sigkill(tmp_path):
    args = ["pretrain", "--model", SPEC, "--model-arg", "width=4", "--dataset", "digits", "--subset", 96,
            "--batch-size", 16, "--epochs", 2, "--checkpoint-every", 2, *FAST_CLI]
    run_cli(*args, "--out", tmp_path / "ref")                    # uninterrupted, in this process
    # The model's file imports the tests' helpers, as a user's file imports its neighbours.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cut = subprocess.run([sys.executable, "-m", "edge_sel", *map(str, args), "--out", str(tmp_path / "cut")],
                         capture_output=True, text=True, timeout=120,
                         env={**env, "EDGE_SEL_FAULT_KILL_AT_STEP": "9"})      # inside epoch 1 (6 steps each)
    assert cut.returncode == -9, cut.stderr[-2000:]
    resumed = subprocess.run([sys.executable, "-m", "edge_sel", "pretrain", "--resume", str(tmp_path / "cut"),
                              "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert stable(records(tmp_path / "cut")) == stable(records(tmp_path / "ref"))
    assert read_card(tmp_path / "cut").model["kwargs"] == {"width": 4}
    for name, tensor in read_weights(tmp_path / "ref").items():
        assert torch.equal(tensor, read_weights(tmp_path / "cut")[name]), name
    # the source memory (anchors, Fisher, source weights) written by the resume: the same bytes
    for name in ("anchors.safetensors", "fisher.safetensors", "source.safetensors"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


@needs_ort
def test_the_unregistered_model_exports_and_trains_in_the_ort_backend(warm, tmp_path):
    from edge_sel.export.exporter import export_artifacts
    manifest = export_artifacts(warm, tmp_path / "art", schemes=["full", "classifier"])
    assert manifest["schemes"]["classifier"]["trainable"] == ["head.weight", "head.bias"]   # the discovered head
    run_cli("finetune", "--checkpoint", warm, "--backend", "ort", "--artifacts", tmp_path / "art" / "full",
            "--momentum", 0, "--weight-decay", 0, "--dataset", "digits", "--shard", "1/2", "--subset", 64, "--epochs", 1,
            "--keep", "last", "--out", tmp_path / "ort", *FAST_CLI)
    rec = records(tmp_path / "ort")[-1]
    assert rec["backward_samples"] == 64 and 0 < rec["train_loss"] < 10
    # The steps moved every trainable weight (a backend that never stepped its optimizer passed).
    before, after = read_weights(warm), read_weights(tmp_path / "ort")
    trainable = manifest["schemes"]["full"]["trainable"]
    assert trainable and all(not torch.equal(before[name], after[name]) for name in trainable)


@needs_ort
def test_an_operator_ort_cannot_train_is_refused_by_name(tmp_path, capsys):
    pretrain(f"{__file__}:make_hardswish", DataOptions("digits", subset=40), TrainConfig(epochs=0, **FAST),
             tmp_path / "hs", quiet=True)
    code, err = run_main(["export", "--checkpoint", tmp_path / "hs", "--out", tmp_path / "art"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "operator HardSwish" in err and "ONNX Runtime training cannot differentiate" in err
    assert not (tmp_path / "art").exists()          # nothing half-written is left


def test_the_groupnorm_model_runs_bn_adapt_as_a_stated_no_op(tmp_path, capfd):
    pretrain("groupnorm_cnn", DataOptions("digits", shard="0/2", subset=40), TrainConfig(epochs=0, **FAST),
             tmp_path / "gn", quiet=True)
    capfd.readouterr()
    finetune(tmp_path / "gn", DataOptions("digits", shard="1/2", subset=40), TrainConfig(epochs=0, bn_adapt=32, **FAST),
             tmp_path / "adapt", quiet=True)
    assert "--bn-adapt: not applicable: the model has no BatchNorm layers" in capfd.readouterr().err
    rec = records(tmp_path / "adapt")[-1]
    assert rec["phase"] == "bn_adapt" and rec["bn_adapt"].startswith("not applicable")
    assert rec["bn_adapt_samples"] == 0 and rec["flops_bn_adapt"] == 0 and rec["forward_samples"] == 0
    before, after = read_weights(tmp_path / "gn"), read_weights(tmp_path / "adapt")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_mobilenetv2_blocks_follow_the_documented_rule_and_blocks_overrides_them():
    from edge_sel.methods.update.sparse import LayerFreeze
    from edge_sel.models import MobileNetV2
    from edge_sel.models.blocks import named_blocks
    model = MobileNetV2(num_classes=10, width_mult=0.25)
    assert [n for n, _ in named_blocks(model)] == ["stem", *[f"features.{i}" for i in range(17)], "head_conv", "fc"]
    text = (ROOT / "docs" / "models.md").read_text()
    assert "stem, features.0, ..., features.16, head_conv, fc" in text        # what the page documents
    freeze = LayerFreeze(block_names=["stem", "features.3", "fc"])
    freeze.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), None)
    assert freeze.sizes == [sum(p.numel() for p in m.parameters()) for m in (model.stem, model.features[3], model.fc)]
    with pytest.raises(InputError, match="--blocks: no module named 'nope'"):
        named_blocks(model, ["stem", "nope"])
    with pytest.raises(InputError, match="share parameters"):
        named_blocks(model, ["features", "features.3"])


def test_model_specs_that_cannot_be_built_are_one_line_naming_them(tmp_path, capsys):
    cases = [(["--model", "no_such_package_xyz.models:make"], "cannot import no_such_package_xyz"),
             (["--model", f"{tmp_path}/missing.py:make"], "no such file"),
             (["--model", f"{__file__}:not_there"], "has no attribute 'not_there'"),
             (["--model", SPEC, "--model-arg", "width"], "--model-arg 'width': expected KEY=VALUE"),
             (["--model", SPEC, "--model-arg", "depth=3"], "unexpected keyword argument 'depth'"),
             (["--model", "edgecnn", "--init-weights", tmp_path / "none.pt"], "--init-weights")]
    try:
        import torchvision.models  # noqa: F401
    except Exception:         # the CPU torch here: torchvision does not import, and says so
        cases.append((["--model", "torchvision:resnet18"], "torchvision does not import here"))
    for args, expected in cases:
        code, err = run_main(["pretrain", *args, "--epochs", 1, "--out", tmp_path / "never"], capsys)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "never").exists()


def test_init_weights_from_a_state_dict_or_safetensors(tmp_path):
    from safetensors.torch import save_file
    source = make_plain(10, width=4)
    torch.nn.init.constant_(source.head.bias, 0.25)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for file in ("w.pt", "w.safetensors"):
        pretrain(SPEC, DataOptions("digits", subset=40), TrainConfig(epochs=0, **FAST), tmp_path / file[2:],
                 quiet=True, model_args={"width": 4}, init_weights=tmp_path / file)
        assert torch.equal(read_weights(tmp_path / file[2:])["head.bias"], torch.full((10,), 0.25))
        assert read_card(tmp_path / file[2:]).training["init_weights"]["file"] == str(tmp_path / file)
    with pytest.raises(InputError, match="does not fit the model"):
        pretrain(SPEC, DataOptions("digits", subset=40), TrainConfig(epochs=0, **FAST), tmp_path / "bad",
                 quiet=True, model_args={"width": 5}, init_weights=tmp_path / "w.pt")


def test_grouped_convolution_backward_flops_are_twice_the_forward():
    from edge_sel.core.flops import FlopCounter
    depthwise = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(),
                              nn.Linear(8 * 64, 10))
    forward, backward = FlopCounter(depthwise, [1, 8, 8]).train_step(4)
    first_conv = 2 * 4 * 64 * 8          # its input needs no gradient: weight gradient only
    assert backward == 2 * forward - first_conv


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "python-api.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    script = types.ModuleType("__main__")          # run as a script would be: its classes live in __main__
    monkeypatch.setitem(sys.modules, "__main__", script)
    exec(compile(code, "docs/python-api.md", "exec"), script.__dict__)
    mine = script.mine
    assert mine.summary["model"]["architecture"] == "__main__:SmallNet"
    assert (tmp_path / "runs" / "api-mine-start" / "model.json").is_file()
    assert script.tuned.records[-1]["strategy"] == "sundew" and script.tuned.records[-1]["sparsity_kind"] == "structured"
    trained = [r for r in mine.records if r["phase"] == "finetune"]
    assert len(trained) == 1 and trained[0]["backward_samples"] > 0


def test_a_model_object_starts_with_the_normalisation_of_the_fine_tunes_own_data(tmp_path):
    """Before: the start checkpoint (OUT-start) was written from the whole dataset, without the
    call's shard, subset, shift or data_dir, so its normalisation came from other data."""
    import edge_sel
    data = dict(shard="1/2", subset=120, shift="corrupt=contrast:4")
    edge_sel.finetune(make_plain(10), "digits", out=tmp_path / "run", epochs=1, **FAST, **data)
    card = read_card(tmp_path / "run-start")
    mean, std = DataOptions("digits", **data).load().train.channel_stats()
    assert card.mean == pytest.approx(list(mean)) and card.std == pytest.approx(list(std))
    assert card.dataset["shard"] == "1/2"
