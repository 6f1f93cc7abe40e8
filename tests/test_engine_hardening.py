"""Engine defects under faults: checkpoints with non-finite weights, the two-pass gating forward and
BatchNorm statistics."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from edge_sel.core.flops import FlopCounter
from edge_sel.engine.ledger import ComputeLedger
from edge_sel.engine.scoring import ScoringPasses
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
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--subset", "160", "--epochs", "1", "--preset", "ast-two",
            "--bn-mode", "eval", "--keep", "last", "--quiet", "--out", out)
    start = bn_buffers(load_file(str(tiny_warm / "model.safetensors")))
    end = bn_buffers(load_file(str(out / "model.safetensors")))
    assert start and all(torch.equal(start[k], end[k]) for k in start)
