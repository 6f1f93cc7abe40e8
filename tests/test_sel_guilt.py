"""The guilt threshold: the percentile of |grad|, its per-stage decay, the calibration step."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edge_sel.data import BatchLoader
from edge_sel.methods.update.guilt import calibrate, percentile, stage_threshold
from edge_sel.models import untrained_twin
from sel_helpers import TinyNet, tiny_context


@pytest.mark.parametrize("q", [0, 20, 40, 50, 97.5, 100])
def test_percentile_matches_numpy_interpolation(q):
    values = torch.randn(1001, generator=torch.Generator().manual_seed(1)).abs()
    assert percentile(values, q) == pytest.approx(np.percentile(values.numpy(), q), rel=1e-6)


def test_percentile_beyond_torch_quantile_limit():
    # torch.quantile refuses more than 2**24 entries; ResNet-18 has 11.2M and bigger models more.
    n = 2 ** 24 + 7
    values = torch.arange(n, dtype=torch.float32).flip(0)
    with pytest.raises(RuntimeError):
        torch.quantile(values, 0.4)
    expected = 0.4 * (n - 1)      # sorted values are 0..n-1: the percentile is its position
    assert percentile(values, 40) == pytest.approx(expected, rel=1e-6)


def test_stage_thresholds_decay_as_the_seed():
    g0 = 0.000604
    assert [round(stage_threshold(g0, s, 0.3) / g0, 2) for s in range(5)] == [1.0, 0.94, 0.88, 0.82, 0.76]
    assert [round(stage_threshold(g0, s, 0.4) / g0, 2) for s in range(5)] == [1.0, 0.92, 0.84, 0.76, 0.68]
    assert stage_threshold(1.0, 2, 0.3, num_stages=3) == pytest.approx(0.8)


def test_calibration_is_the_percentile_of_one_steps_gradients_and_leaves_the_model_alone():
    ctx = tiny_context(per_class=40)
    model = ctx.model
    before = copy.deepcopy(model.state_dict())
    out = calibrate(model, ctx, samples=32, q=40, seed=5)
    for k, v in model.state_dict().items():              # weights and BN statistics untouched
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    # Recompute by hand: the same 32 samples, augmented by the same seeded generator.
    twin = copy.deepcopy(model).train()
    positions = torch.randperm(len(ctx.train), generator=torch.Generator().manual_seed(5))[:32]
    loader = BatchLoader(ctx.train, ctx.mean, ctx.std, 32, True, torch.Generator().manual_seed(5))
    batch = next(iter(loader.batches(positions)))
    nn.functional.cross_entropy(twin(batch.x), batch.y).backward()
    grads = torch.cat([p.grad.abs().flatten() for p in twin.parameters()])
    assert out["g0"] == pytest.approx(np.percentile(grads.numpy(), 40), rel=1e-5)
    assert out["entries"] == sum(p.numel() for p in model.parameters())
    assert out["samples"] == 32 and out["flops"] > 0


def test_untrained_twin_is_a_fresh_initialisation():
    model = TinyNet()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.b1[1].running_mean.fill_(3.0)
    a, b = untrained_twin(model, seed=7), untrained_twin(model, seed=7)
    for (name, pa), pb, pm in zip(a.named_parameters(), b.parameters(), model.parameters()):
        assert torch.equal(pa, pb), name                  # seeded: the same twin twice
        assert not torch.equal(pa, pm), name
    assert torch.equal(a.b1[1].running_mean, torch.zeros(8))
    assert a.b1[1].weight.eq(1).all()                     # BN affine reset to its init
