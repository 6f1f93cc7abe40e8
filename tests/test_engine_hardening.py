"""Engine defects under faults: checkpoints with non-finite weights, the two-pass gating forward and
BatchNorm statistics, and the paired-methods claim that every method augments a sample alike."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from edge_sel.core.flops import FlopCounter
from edge_sel.engine.loop.ledger import ComputeLedger
from edge_sel.engine.loop.scoring import ScoringPasses
from edge_sel.models import build_model
from helpers import run_cli, run_main


def bn_buffers(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(tiny_warm, tmp_path, capsys, value):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_warm, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = sorted(k for k in weights if k.endswith("weight"))[1]
    weights[name].view(-1)[3] = value
    save_file(weights, str(broken / "model.safetensors"))
    before = (broken / "model.safetensors").read_bytes()
    code, err = run_main(["finetune", "--checkpoint", broken, "--dataset", "synthetic", "--epochs", "1",
                          "--quiet", "--out", tmp_path / "out"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(broken / "model.safetensors") in lines[0] and repr(name) in lines[0]
    assert ("NaN" if value != value else "Inf") in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists() and (broken / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_the_two_pass_scoring_forward_leaves_batchnorm_statistics_alone(bn_mode):
    torch.manual_seed(0)
    model = build_model("edgecnn", 4, 3)
    with torch.no_grad():     # statistics a forward in train mode would visibly move
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(0.5)
                m.running_var.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scoring = ScoringPasses(model, None, None, None, torch.device("cpu"), 64, torch.contiguous_format,
                            FlopCounter(model, (3, 16, 16)), ComputeLedger(), bn_mode)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 3 + 1
    logits = scoring.batch_logits(x)
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    # Normalised as the training step normalises: batch statistics, or the running ones under eval.
    model.train()
    if bn_mode == "eval":
        model.eval()
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_ast_two_pass_under_bn_mode_eval_never_moves_the_running_statistics(tiny_warm, tmp_path):
    out = tmp_path / "ast"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--subset", "160", "--epochs", "1",
            "--preset", "ast-two", "--bn-mode", "eval", "--keep", "last", "--memory-format", "contiguous",
            "--eval-batch-size", "256", "--quiet", "--out", out)
    start = bn_buffers(load_file(str(tiny_warm / "model.safetensors")))
    end = bn_buffers(load_file(str(out / "model.safetensors")))
    assert start and all(torch.equal(start[k], end[k]) for k in start)


def test_every_method_of_a_seed_gives_a_sample_the_same_augmentation(tiny_warm, tmp_path, monkeypatch):
    """`bench adapt` pairs methods by seed and says each sees the same augmentation: a random gate
    drawing from the run's random stream must not change how the samples it keeps are augmented."""
    from edge_sel.data import BatchLoader
    seen: dict[str, dict[int, torch.Tensor]] = {}
    original = BatchLoader.batches

    def batches(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            if self.augment:
                for i, x in zip(batch.index.tolist(), batch.x):
                    seen[current].setdefault(i, x.clone())      # epoch 0's first look only
            yield batch
    monkeypatch.setattr(BatchLoader, "batches", batches)
    common = ["--checkpoint", tiny_warm, "--dataset", "synthetic", "--subset", "64", "--epochs", "1",
              "--batch-size", "16", "--memory-format", "contiguous", "--eval-batch-size", "256", "--quiet"]
    for current, extra in (("dense", []), ("random", ["--strategy", "random", "--target-activation", "0.5"])):
        seen[current] = {}
        run_cli("finetune", *common, *extra, "--out", tmp_path / current)
    both = sorted(set(seen["dense"]) & set(seen["random"]))
    assert len(both) >= 20
    assert all(torch.equal(seen["dense"][i], seen["random"][i]) for i in both)
