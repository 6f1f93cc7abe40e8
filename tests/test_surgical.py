"""Block choice by measured gradient-to-weight ratio (Auto-RGN): which blocks train, at what rate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edge_sel.backends.torch_backend import TorchBackend
from edge_sel.methods.update.surgical import AutoRGN, blocks_to_train, rgn_scales
from helpers import SAME_CHOICES, records, run_cli


class Chain(nn.Module):
    """Three linear blocks; `shrink` scales one block's weights down, which raises its ratio."""

    def __init__(self, shrink: int):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)])
        with torch.no_grad():
            for p in self.layers[shrink].parameters():
                p.mul_(0.01)

    def blocks(self):
        return list(self.layers)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


def test_scales_and_choice():
    assert rgn_scales([2.0, None, 0.5, 1.0]) == [1.0, None, 0.25, 0.5]
    assert blocks_to_train([1.0, None, 0.25, 0.5], 0.3) == [0, 3]
    assert blocks_to_train([0.1, 1.0, 0.2], 1.0) == [1]        # the largest always trains
    assert blocks_to_train([None, None], 0.5) == [0, 1]        # nothing measured: nothing frozen


@pytest.mark.parametrize("shrink", [0, 1, 2])
def test_the_block_with_the_largest_measured_ratio_trains(shrink):
    model = Chain(shrink)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    updater = AutoRGN(floor=1.0, probe_every=10)
    updater.attach(model, opt, SimpleNamespace(device=torch.device("cpu")))
    assert len(opt.param_groups) == 3
    backend = TorchBackend(model, opt, updater, torch.device("cpu"), amp=False)
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3
    # The probe step (step 0): every block computes its gradient; the ratios are measured by hand too.
    updater.before_step(0, None)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    by_hand = [torch.cat([p.grad.flatten() for p in b.parameters()]).norm().item()
               / torch.cat([p.detach().flatten() for p in b.parameters()]).norm().item() for b in model.blocks()]
    assert max(range(3), key=lambda i: by_hand[i]) == shrink      # the constructed case holds
    backend.set_lr(0.1)
    backend.train_step(0, SimpleNamespace(x=x, y=y, weight=None))
    assert updater.last_rgn == pytest.approx(by_hand, rel=1e-5)
    assert updater.trained == [shrink]
    assert [p.requires_grad for b in model.blocks() for p in b.parameters()] == \
        [i == shrink for i in range(3) for _ in range(2)]
    # The next step moves only the chosen block, at the full rate (its share is 1).
    before = [p.detach().clone() for p in model.parameters()]
    updater.before_step(1, None)
    backend.set_lr(0.1)
    backend.train_step(1, SimpleNamespace(x=x, y=y, weight=None))
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before)]
    assert moved == [i == shrink for i in range(3) for _ in range(2)]
    assert opt.param_groups[shrink]["lr"] == pytest.approx(0.1)


def test_per_block_rates_follow_the_ratios():
    model = Chain(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    updater = AutoRGN(floor=0.0, probe_every=10)
    updater.attach(model, opt, SimpleNamespace(device=torch.device("cpu")))
    backend = TorchBackend(model, opt, updater, torch.device("cpu"), amp=False)
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3
    updater.before_step(0, None)
    backend.set_lr(0.1)
    backend.train_step(0, SimpleNamespace(x=x, y=y, weight=None))
    backend.set_lr(0.2)
    top = max(updater.last_rgn)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2 * r / top for r in updater.last_rgn])


def test_rgn_runs_record_trained_blocks_and_count_the_smaller_backward(tiny_warm, tmp_path):
    common = ["--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--batch-size", "32", "--quiet"]
    run_cli("finetune", *common, "--out", tmp_path / "dense")
    run_cli("finetune", *common, "--sparsity", "rgn", "--rgn-floor", "1.0", "--probe-every", "1000",
            "--out", tmp_path / "rgn")
    dense, rgn = records(tmp_path / "dense")[0], records(tmp_path / "rgn")[0]
    assert len(rgn["trained_blocks"]) == 1 and rgn["probe_steps"] == 1
    assert rgn["block_lr_scale"][rgn["trained_blocks"][0]] == 1.0
    assert rgn["frozen_frac"] > 0 and rgn["compute_saved_by_sparsity"] is True
    assert rgn["flops_forward"] == dense["flops_forward"] and rgn["flops_backward"] < dense["flops_backward"]


def test_bad_rgn_floor_is_a_one_line_error(tiny_warm, tmp_path):
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                     "--sparsity", "rgn", "--rgn-floor", "1.5", "--out", tmp_path / "run", expect=2)
    assert "--rgn-floor" in result.output and "Traceback" not in result.output


def test_re_estimation_alone_is_kept_when_training_on_wrong_labels_does_worse(tiny_warm, tmp_path):
    """The re-estimated model is a keep-best candidate: a fine-tune on mostly wrong labels ends below
    it, and the output is then bit for bit what `--epochs 0 --bn-adapt N` hands back."""
    import json
    from safetensors.torch import load_file
    common = ["--checkpoint", tiny_warm, "--dataset", "synthetic", "--shift", "corrupt=contrast:4;label-noise=0.9",
              "--bn-adapt", "200", "--batch-size", "32", "--lr", "0.1", "--quiet",
              "--max-forgetting", "100",       # validation's choice alone (the guard: tests/test_guard.py)
              "--threads", "1",     # bit for bit: both runs sum in one thread (a busy CPU gave them different counts)
              *SAME_CHOICES]        # ... and in the layout, precision and evaluation batch a probe under load may not repeat
    run_cli("finetune", *common, "--epochs", "0", "--out", tmp_path / "bn")
    run_cli("finetune", *common, "--epochs", "3", "--out", tmp_path / "tuned")
    kept = json.loads((tmp_path / "tuned" / "summary.json").read_text())["kept"]
    first = records(tmp_path / "tuned")[0]
    assert first["bn_adapt_val_acc"] is not None and first["val_samples_evaluated"] > 0
    assert kept["kept"] == "bn_adapt" and "BatchNorm-adapted model" in kept["reason"]
    assert kept["kept_test_acc"] is not None
    a, b = load_file(tmp_path / "bn" / "model.safetensors"), load_file(tmp_path / "tuned" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_blocks_take_the_dense_probe_step_at_their_own_rate():
    """The probe step trains every block; a block frozen for its low ratio moves there at
    lr x its share, never at the full rate (plain SGD: the move is exactly lr x grad)."""
    model = Chain(2).double()       # the frozen blocks' moves are tiny: float64 resolves them
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    updater = AutoRGN(floor=1.0, probe_every=2)
    updater.attach(model, opt, SimpleNamespace(device=torch.device("cpu")))
    backend = TorchBackend(model, opt, updater, torch.device("cpu"), amp=False)
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)).double(), torch.arange(32) % 3
    for step in (0, 1):
        backend.set_lr(0.1)
        updater.before_step(step, None)
        backend.train_step(step, SimpleNamespace(x=x, y=y, weight=None))
    scales = list(updater.scales)
    assert updater.trained == [2] and all(scales[i] < 1.0 for i in (0, 1))
    # Step 2 is a probe: the frozen blocks compute gradients again, each at its measured share.
    backend.set_lr(0.1)
    updater.before_step(2, None)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * s for s in scales])
    first = model.layers[0].weight
    grad, = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), first)
    before = first.detach().clone()
    backend.train_step(2, SimpleNamespace(x=x, y=y, weight=None))
    assert torch.allclose(before - first.detach(), 0.1 * scales[0] * grad, rtol=1e-6, atol=0)
