"""The hardness store: keyed by stable id, updated only by observed (trained) samples, saveable; and
gate state that survives a checkpoint round trip with identical behaviour afterwards."""

import io
import math

import pytest
import torch

from edge_sel.methods.select.hardness import HardnessStore
from edge_sel.methods.select.significance import dih, loss_entropy

from edge_sel.methods.base import Plan

from gating_helpers import fake_batch, fake_ctx, make_gate


def store_with_ids(n=6, **kw):
    ids = torch.tensor([50, 10, 40, 20, 60, 30][:n])      # stable ids, not in position order
    return HardnessStore(ids, num_classes=3, **kw), ids


def logits_for(labels, right=True, margin=4.0):
    out = torch.zeros(len(labels), 3)
    target = labels if right else (labels + 1) % 3
    out[torch.arange(len(labels)), target] = margin
    return out


def test_observe_updates_exactly_the_trained_ids_at_their_positions():
    store, ids = store_with_ids()
    labels = torch.tensor([0, 1])
    store.observe(torch.tensor([40, 30]), torch.tensor([0.5, 2.0]), logits_for(labels), labels, epoch=3, lr=0.1)
    assert store.slots(torch.tensor([40, 30])).tolist() == [2, 5]
    assert store.visits.tolist() == [0, 0, 1, 0, 0, 1]
    assert store.last_epoch.tolist() == [-1, -1, 3, -1, -1, 3]
    assert store.last_loss[[2, 5]].tolist() == [0.5, 2.0]
    assert store.last_loss[[0, 1, 3, 4]].abs().sum() == 0
    with pytest.raises(KeyError):
        store.slots(torch.tensor([11]))


def test_dih_is_a_moving_average_and_change_and_flip_need_a_previous_visit():
    store, _ = store_with_ids(gamma=0.9)
    y = torch.tensor([0])
    store.observe(torch.tensor([10]), torch.tensor([1.0]), logits_for(y, right=True), y, 0, 0.1)
    assert store.dih[1] == pytest.approx(1.0) and store.loss_change[1] == 0 and store.flip[1] == 0
    store.observe(torch.tensor([10]), torch.tensor([3.0]), logits_for(y, right=False), y, 1, 0.1)
    assert store.dih[1] == pytest.approx(0.9 * 3.0 + 0.1 * 1.0)
    assert store.loss_change[1] == pytest.approx(2.0) and store.flip[1] == 1.0
    assert store.visits[1] == 2 and store.last_correct[1] == 0.0


def test_rate_normalised_signals_divide_by_the_learning_rates_between_visits():
    store, _ = store_with_ids(signal="dloss", lr_normalised=True, gamma=1.0)
    y = torch.tensor([0])
    store.observe(torch.tensor([10]), torch.tensor([1.0]), logits_for(y), y, 0, lr=0.1)   # first visit: no DIH
    assert not store.dih_known[1]
    for lr in (0.2, 0.3):   # two other steps move the weights
        store.observe(torch.tensor([20]), torch.tensor([1.0]), logits_for(y), y, 0, lr=lr)
    store.observe(torch.tensor([10]), torch.tensor([0.4]), logits_for(y), y, 1, lr=0.05)
    assert store.dih[1] == pytest.approx(0.6 / (0.1 + 0.2 + 0.3), rel=1e-5)
    loss_store, _ = store_with_ids(signal="loss", lr_normalised=True, gamma=1.0)
    loss_store.observe(torch.tensor([10]), torch.tensor([1.0]), logits_for(y), y, 0, lr=0.1)
    loss_store.observe(torch.tensor([20]), torch.tensor([1.0]), logits_for(y), y, 0, lr=0.2)
    assert loss_store.dih[3] == pytest.approx(1.0 / 0.1)   # divided by the previous step's lr


def test_never_seen_samples_are_maximally_significant():
    store, _ = store_with_ids()
    y = torch.tensor([0, 1])
    store.observe(torch.tensor([50, 10]), torch.tensor([0.01, 5.0]), logits_for(y), y, 0, 0.1)
    for s in (loss_entropy(store), dih(store)):
        assert s[2:].eq(1.0).all() and (s[:2] < 1).all() and (s >= 0).all()
        assert s[1] > s[0]          # higher loss, more significant


def test_store_state_survives_torch_save_and_lines_up_by_id():
    store, ids = store_with_ids(signal="flip", lr_normalised=True)
    y = torch.tensor([0, 1, 2])
    for epoch in range(3):
        store.observe(torch.tensor([50, 20, 30]), torch.rand(3), torch.randn(3, 3), y, epoch, 0.1 * (epoch + 1))
    buf = io.BytesIO()
    torch.save(store.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    same = HardnessStore(ids, 3, signal="flip", lr_normalised=True)
    same.load_state_dict(state)
    for name in ("last_loss", "last_entropy", "dih", "visits", "last_epoch", "lr_mark", "flip"):
        assert torch.equal(getattr(same, name), getattr(store, name)), name
    assert same.cum_lr == store.cum_lr and same.prev_lr == store.prev_lr
    # A run whose training set holds other ids in another order: matched by id, the rest unseen.
    other = HardnessStore(torch.tensor([30, 99, 50]), 3, signal="flip", lr_normalised=True)
    other.load_state_dict(state)
    assert other.visits.tolist() == [3, 0, 3]
    assert other.last_loss[0] == store.last_loss[5] and other.last_loss[2] == store.last_loss[0]


@pytest.mark.parametrize("name,extra", [("sundew", {}), ("sundew", {"significance": "dih", "unbiased": True}),
                                        ("infobatch", {}), ("dihcl", {"dih_select": "exp"}),
                                        ("dihcl", {"dih_select": "beta", "dih_signal": "flip"}),
                                        ("random", {"energy_budget_per_epoch": 5.0})])
def test_gate_state_round_trip_gives_identical_plans(name, extra):
    ctx = fake_ctx(n=300)
    gate = make_gate(name, ctx, target_activation=0.3, dih_warm=1, **extra)
    for epoch in range(3):
        ctx.state["epoch"] = epoch
        plan = gate.select(epoch, Plan(torch.randperm(300, generator=ctx.generator)))
        for lo in range(0, len(plan.positions), 64):
            gate.observe(*fake_batch(ctx, plan.positions[lo: lo + 64]))
        gate.end_epoch(epoch, {"energy_j": 2.0 + epoch, "backward_samples": len(plan.positions)})
    buf = io.BytesIO()
    torch.save(gate.state_dict(), buf)
    buf.seek(0)
    twin = make_gate(name, fake_ctx(n=300), target_activation=0.3, dih_warm=1, **extra)
    twin.load_state_dict(torch.load(buf))
    twin.ctx.generator.manual_seed(7)
    gate.ctx.generator.manual_seed(7)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    a, b = gate.select(3, Plan(order)), twin.select(3, Plan(order))
    assert torch.equal(a.positions, b.positions)
    assert (a.weights is None and b.weights is None) or torch.allclose(a.weights, b.weights)
    assert {k: v for k, v in a.info.items() if not (isinstance(v, float) and math.isnan(v))} == \
        {k: v for k, v in b.info.items() if not (isinstance(v, float) and math.isnan(v))}
