"""Sparse updaters: the guilt mask really keeps masked entries still; layer freezing really
removes backward work, by the share the FLOP counter gives for the frozen set."""

import copy

import pytest
import torch
from torch import nn

from edge_sel.backends.torch_backend import TorchBackend
from edge_sel.core.flops import FlopCounter
from edge_sel.data import BatchLoader
from edge_sel.methods.update import sparse
from edge_sel.methods.update.sparse import GuiltMask, LayerFreeze, choose_frozen
from sel_helpers import tiny_context


def batches(ctx, n, batch_size=16):
    loader = BatchLoader(ctx.train, ctx.mean, ctx.std, batch_size, True, torch.Generator().manual_seed(3))
    order = torch.randperm(len(ctx.train), generator=torch.Generator().manual_seed(4))
    out = []
    while len(out) < n:
        out += list(loader.batches(order))
    return out[:n]


class RecordingMask(GuiltMask):
    """Remembers which entries each step masked (a zero gradient after masking)."""

    def after_backward(self, step):
        super().after_backward(step)
        self.masked = [p.grad == 0 for p in self.model.parameters()]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mask_keeps_masked_entries_and_their_optimizer_state_bit_identical(optimizer):
    ctx = tiny_context()
    model = ctx.model
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
    mask = RecordingMask(percentile=60)
    mask.attach(model, opt, ctx)
    backend = TorchBackend(model, opt, mask, torch.device("cpu"), amp=False)
    shares, moved = [], 0
    for step, batch in enumerate(batches(ctx, 6)):
        before = [p.detach().clone() for p in model.parameters()]
        state_before = [{k: v.clone() for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)}
                        for p in model.parameters()]
        mask.before_step(step, batch)                      # as the loop does: calibrates at step 0
        backend.train_step(step, batch)
        total = sum(m.numel() for m in mask.masked)
        shares.append(sum(m.sum().item() for m in mask.masked) / total)
        for p, b, m, st in zip(model.parameters(), before, mask.masked, state_before):
            assert torch.equal(p.detach()[m], b[m])                 # bit-identical, every step
            moved += (p.detach() != b).sum().item()
            for k, v in opt.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    old = st.get(k, torch.zeros_like(v))
                    assert torch.equal(v[m], old[m]), k            # moments / momentum untouched
    assert moved > 0
    assert 0.1 < shares[0] < 0.95         # p60 of the warmup copy's gradients, on another batch
    record = mask.end_epoch()
    assert record["grad_sparsity"] == pytest.approx(sum(shares) / len(shares))
    assert record["sparsity_kind"] == "update" and record["compute_saved_by_sparsity"] is False
    assert record["flops_calibration"] > 0 and record["calibration_samples"] == min(128, len(ctx.train))
    assert "flops_calibration" not in mask.end_epoch()           # charged once


def test_without_restoring_adam_moves_masked_entries():
    """The seed's flaw, shown: zeroing a gradient does not stop Adam's momentum."""
    ctx = tiny_context()
    model = ctx.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mask = RecordingMask(percentile=60)
    mask.attach(model, opt, ctx)
    mask.after_step = lambda step: None                          # mask the gradient only
    backend = TorchBackend(model, opt, mask, torch.device("cpu"), amp=False)
    drifted = 0
    for step, batch in enumerate(batches(ctx, 4)):
        before = [p.detach().clone() for p in model.parameters()]
        mask.before_step(step, batch)
        backend.train_step(step, batch)
        if step > 0:
            drifted += sum((p.detach()[m] != b[m]).sum().item()
                           for p, b, m in zip(model.parameters(), before, mask.masked))
    assert drifted > 0


def test_mask_threshold_follows_the_published_stage():
    ctx = tiny_context()
    mask = GuiltMask(percentile=40, decay=0.3)
    mask.attach(ctx.model, torch.optim.Adam(ctx.model.parameters()), ctx)
    assert mask.g0 is None                      # calibrated at the first step, inside its epoch
    mask.before_step(0, None)
    g0 = mask.g0
    assert mask.threshold() == pytest.approx(g0)
    ctx.state.update(stage=4, curriculum_stages=5)
    assert mask.threshold() == pytest.approx(g0 * 0.82)


class LinearStack(nn.Module):
    """Bias-free linear blocks: backward FLOPs can be written down by hand."""

    def __init__(self, dims=(12, 20, 16, 4)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))
        self.dims = dims

    def blocks(self):
        return list(self.layers)

    def forward(self, x):
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def test_flop_counter_skips_frozen_prefix_work_as_written_by_hand():
    model = LinearStack()
    d0, d1, d2, d3 = model.dims
    counter = FlopCounter(model, [d0])
    b = 8
    _, dense = counter.train_step(b)
    # Weight gradients of all three layers, input gradients of layers 2 and 3 (not of the input).
    assert dense == 2 * b * (d0 * d1 + 2 * d1 * d2 + 2 * d2 * d3)
    model.layers[0].weight.requires_grad_(False)
    _, prefix = counter.train_step(b)
    assert prefix == 2 * b * (d1 * d2 + 2 * d2 * d3)      # layer 1: nothing at all
    model.layers[0].weight.requires_grad_(True)
    model.layers[2].weight.requires_grad_(False)
    _, last = counter.train_step(b)
    assert last == 2 * b * (d0 * d1 + 2 * d1 * d2 + d2 * d3)   # only its weight gradient goes


def test_layers_freeze_leaves_no_gradient_and_drops_counted_backward(monkeypatch):
    model = LinearStack(dims=(3 * 8 * 8, 20, 16, 4))
    ctx = tiny_context(model=model)
    # Block guilt fixed so the least guilty block is the first: a frozen prefix.
    monkeypatch.setattr(sparse, "block_guilt", lambda blocks: [0.01, 0.5, 1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    updater = LayerFreeze(target=0.95, probe_every=4)
    updater.attach(model, opt, ctx)
    backend = TorchBackend(model, opt, updater, torch.device("cpu"), amp=False)
    counter = FlopCounter(model, ctx.train.input_shape)
    _, dense = counter.train_step(12)
    frozen_twin = copy.deepcopy(model)
    frozen_twin.layers[0].weight.requires_grad_(False)
    _, expected_frozen = FlopCounter(frozen_twin, ctx.train.input_shape).train_step(12)
    assert expected_frozen < dense
    total_backward = 0
    first = model.layers[0].weight
    for step, batch in enumerate(batches(ctx, 8, batch_size=12)):
        updater.before_step(step, batch)
        total_backward += counter.train_step(len(batch.y))[1]
        before = first.detach().clone()
        momentum = opt.state.get(first, {}).get("momentum_buffer")
        momentum = None if momentum is None else momentum.clone()
        backend.train_step(step, batch)
        if step % 4 == 0:
            assert first.requires_grad is False                  # frozen again after the probe
        else:
            assert first.grad is None                            # no gradient was computed
            assert torch.equal(first.detach(), before)           # no momentum or decay drift
            assert torch.equal(opt.state[first]["momentum_buffer"], momentum)
    # Steps 0 and 4 are dense probes, the other six run the frozen graph.
    assert total_backward == 2 * dense + 6 * expected_frozen
    record = updater.end_epoch()
    share = first.numel() / sum(p.numel() for p in model.parameters())
    assert record["frozen_frac"] == pytest.approx(6 / 8 * share)
    assert record["grad_sparsity"] == record["frozen_frac"]
    assert record["frozen_blocks"] == [0] and record["probe_steps"] == 2
    assert record["sparsity_kind"] == "structured" and record["compute_saved_by_sparsity"] is True


def test_choose_frozen_least_guilty_within_budget_prefix_on_ties():
    sizes = [10, 10, 60, 20]
    # Blocks 0 and 1 tie (within 10%): the earlier goes first; block 2 would overshoot the budget.
    assert choose_frozen([0.105, 0.1, 0.05, 1.0], sizes, target=0.7, total=100) == [0, 2]
    assert choose_frozen([0.105, 0.1, 0.05, 1.0], sizes, target=0.15, total=100) == [0]
    assert choose_frozen([0.3, 0.1, 0.05, 1.0], sizes, target=0.15, total=100) == [1]
    # The most guilty block always trains, whatever the budget.
    assert 3 not in choose_frozen([0.3, 0.1, 0.05, 1.0], sizes, target=0.99, total=100)
    assert choose_frozen([None, 0.1, 0.2, 0.3], [0, 10, 10, 10], target=0.5, total=30) == [1]
