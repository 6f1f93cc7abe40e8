"""Gate behaviour on a fake run (no model): what each gate keeps, with which weights, on which
schedule; composition over another strategy's plan; the joule-budget loop; the seed's in-batch modes."""

import copy
import warnings

import pytest
import torch

from edge_sel.data import Batch
from edge_sel.methods import STRATEGIES, GatedStrategy, Plan, Strategy, make_strategy
from edge_sel.methods.select.ast_seed import SeedSundew, seed_mask
from edge_sel.methods.select.energy_budget import ActivationTarget
from edge_sel.methods.select.gating_config import gating_config
from edge_sel.methods.select.significance import seed_significance

from gating_helpers import fake_ctx, hardness_of, make_gate, plan_of, train_epoch

# One torch thread: mutmut runs these in forked workers, where a thread pool started before the
# fork spins until the worker's CPU limit and a mutant would be scored a timeout.
pytestmark = pytest.mark.usefixtures("one_thread")


def is_subsequence(small: torch.Tensor, big: torch.Tensor) -> bool:
    where = {int(p): i for i, p in enumerate(big)}
    idx = [where.get(int(p), -1) for p in small]
    return -1 not in idx and idx == sorted(idx)


def test_random_gate_keeps_the_target_share_in_the_strategy_order_and_anneals():
    ctx = fake_ctx(n=200, epochs=8)
    gate = make_gate("random", ctx, target_activation=0.3, anneal=0.125)
    base = plan_of(ctx)
    plan = gate.select(0, base)
    assert len(plan.positions) == 60 and len(set(plan.positions.tolist())) == 60
    assert is_subsequence(plan.positions, base.positions)
    assert plan.info["gate_activation"] == pytest.approx(0.3) and plan.weights is None
    assert len(gate.select(7, base).positions) == 200          # the last 1/8 of the epochs: all data
    assert len(gate.select(6, base).positions) == 60


def test_infobatch_first_epoch_is_full_then_prunes_below_mean_with_rescaling():
    ctx = fake_ctx(n=400, epochs=8)
    gate = make_gate("infobatch", ctx, prune_ratio=0.5)
    first = train_epoch(gate, ctx, 0)
    # Issue [hardening], item 10: `a and b or c` passed on c alone, the length unchecked.
    assert len(first.positions) == 400 and (first.weights is None or bool(first.weights.eq(1).all()))
    plan = gate.select(1, plan_of(ctx))
    loss = hardness_of(ctx)
    well = loss < loss.mean()
    kept = plan.positions
    assert well[kept].sum() == pytest.approx(0.5 * well.sum().item(), abs=30)   # half the easy ones dropped
    assert (~well).sum() == (~well[kept]).sum()                                 # every hard one kept
    assert torch.allclose(plan.weights[well[kept]], torch.tensor(2.0))
    assert torch.allclose(plan.weights[~well[kept]], torch.tensor(1.0))
    assert len(gate.select(7, plan_of(ctx)).positions) == 400                     # annealed tail


def test_infobatch_never_prunes_a_sample_it_has_not_trained():
    ctx = fake_ctx(n=200)
    gate = make_gate("infobatch", ctx)
    half = Plan(torch.arange(100))
    train_epoch(gate, ctx, 0, half)        # only the first half trained
    plan = gate.select(1, plan_of(ctx))
    assert set(range(100, 200)) <= set(plan.positions.tolist())


@pytest.mark.parametrize("select", ["greedy", "rand", "exp", "beta"])
def test_dihcl_warm_start_then_shrinking_subsets_of_hard_samples(select):
    ctx = fake_ctx(n=400, epochs=10)
    signal = "flip" if select == "beta" else "loss"
    gate = make_gate("dihcl", ctx, dih_select=select, dih_signal=signal, dih_warm=2, dih_shrink=0.5,
                     dih_floor=0.2)
    sizes = [len(train_epoch(gate, ctx, e).positions) for e in range(5)]
    assert sizes == [400, 400, 200, 100, 80]
    if signal == "loss":
        plan = gate.select(5, plan_of(ctx))
        mean_position = plan.positions.float().mean().item()
        assert mean_position > 0.6 * 400 if select == "greedy" else mean_position > 0.5 * 400
        if select == "greedy":
            assert set(plan.positions.tolist()) == set(range(320, 400))   # the 80 hardest


def test_dihcl_ranks_samples_without_dih_first():
    ctx = fake_ctx(n=200)
    gate = make_gate("dihcl", ctx, dih_warm=1, dih_shrink=0.25)
    train_epoch(gate, ctx, 0, Plan(torch.arange(100, 200)))    # warm start over the second half only
    plan = gate.select(1, plan_of(ctx))
    assert len(plan.positions) == 50
    assert set(plan.positions.tolist()) <= set(range(100))


def test_sundew_tracks_target_covers_unseen_first_then_prefers_hard_samples():
    ctx = fake_ctx(n=2000, batch_size=64, epochs=12)
    gate = make_gate("sundew", ctx, target_activation=0.3)
    loss = hardness_of(ctx)
    seen = torch.zeros(2000, dtype=torch.bool)
    fresh_share = []
    for epoch in range(8):
        plan = train_epoch(gate, ctx, epoch)
        assert abs(len(plan.positions) / 2000 - 0.3) <= 0.03
        fresh_share.append((~seen[plan.positions]).float().mean().item())
        seen[plan.positions] = True
        for key in ("threshold_start", "threshold_end", "threshold_mean", "activation_ema", "gate_activation"):
            assert key in plan.info
    assert fresh_share[1] > 0.9                           # never-trained samples go first
    late = gate.select(8, plan_of(ctx)).positions
    assert loss[late].mean() > loss.mean() + 0.5          # then the hard ones


def test_sundew_unbiased_weights_are_inverse_keep_probability_with_mean_one():
    ctx = fake_ctx(n=2000, batch_size=64)
    gate = make_gate("sundew", ctx, target_activation=0.3, unbiased=True, keep_floor=0.1)
    for epoch in range(6):
        train_epoch(gate, ctx, epoch)
    plan = gate.select(6, plan_of(ctx))
    loss = hardness_of(ctx)[plan.positions]
    assert plan.weights.mean().item() == pytest.approx(1.0, abs=1e-4)
    easy, hard = loss < loss.median(), loss >= loss.median()
    assert plan.weights[easy].mean() > 2 * plan.weights[hard].mean()
    assert (loss < 1.0).any()                               # low scorers do get in, at random
    ratio = plan.weights.max() / plan.weights.min()
    assert ratio <= 1 / 0.1 + 1e-3                          # bounded by the keep floor


class StageStrategy(Strategy):
    """Stand-in for a curriculum: a stage window of the data, weighted, with a stage label."""
    name = "stagey"

    def plan(self, epoch):
        positions = torch.arange(100, 300)[torch.randperm(200, generator=self.ctx.generator)]
        return Plan(positions, torch.full((200,), 0.5), {"stage": 2})


@pytest.mark.parametrize("gate", ["sundew", "random", "infobatch", "dihcl"])
def test_gates_compose_over_another_strategys_plan(gate, monkeypatch):
    monkeypatch.setitem(STRATEGIES, "stagey", lambda cfg: StageStrategy())
    strategy = make_strategy("stagey", {"gate": gate, "target_activation": 0.3, "dih_warm": 0})
    assert isinstance(strategy, GatedStrategy) and strategy.name == f"stagey+{gate}"
    ctx = fake_ctx(n=400)
    strategy.setup(ctx)
    for epoch in range(3):
        plan = strategy.plan(epoch)
        assert set(plan.positions.tolist()) <= set(range(100, 300))
        assert plan.info["stage"] == 2
        assert plan.weights is not None and (plan.weights > 0).all()
        assert len(plan.positions) < 200 or gate == "infobatch" and epoch == 0
        if gate in ("sundew", "random"):
            assert abs(len(plan.positions) / 200 - 0.3) <= 0.05
            assert torch.allclose(plan.weights, torch.tensor(0.5))   # the stage's weights carried through
        from gating_helpers import fake_batch
        for lo in range(0, len(plan.positions), 32):
            strategy.observe(*fake_batch(ctx, plan.positions[lo: lo + 32]))


def test_energy_budget_closes_the_loop_on_measured_joules():
    target = ActivationTarget(0.5, budget_j=40.0)
    n = 1000
    used = []
    for epoch in range(10):
        trained = round(target.value * n)
        energy = 10.0 + 0.08 * trained          # fixed cost per epoch plus a cost per trained sample
        used.append(energy)
        fields = target.after_epoch({"energy_j": energy, "backward_samples": trained}, n)
    assert abs(used[-1] - 40.0) / 40.0 < 0.02
    assert fields["next_target_activation"] == pytest.approx(30 / 80, abs=0.01)
    assert fields["joules_per_sample"] > 0.08       # the per-epoch overhead is charged to the samples


def test_energy_budget_without_energy_keeps_the_target_and_warns_once():
    target = ActivationTarget(0.3, budget_j=10.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            target.after_epoch({"energy_j": None, "backward_samples": 300}, 1000)
    assert target.value == 0.3
    assert len([w for w in caught if "energy-budget-per-epoch" in str(w.message)]) == 1


def test_sundew_gate_follows_the_energy_budget():
    ctx = fake_ctx(n=1000, batch_size=50)
    gate = make_gate("sundew", ctx, target_activation=0.5, energy_budget_per_epoch=20.0)
    for epoch in range(6):
        ctx.state["epoch"] = epoch
        plan = gate.select(epoch, plan_of(ctx))
        trained = len(plan.positions)
        fields = gate.end_epoch(epoch, {"energy_j": 0.1 * trained, "backward_samples": trained})
    assert fields["next_target_activation"] == pytest.approx(0.2, abs=0.01)
    assert abs(trained / 1000 - 0.2) < 0.03


def seed_strategy(profile, ctx):
    cfg = gating_config({"sundew_profile": profile})
    s = SeedSundew(cfg)
    s.setup(ctx)
    return s


def test_seed_prod_mode_reproduces_the_masked_full_batch_gradient():
    torch.manual_seed(0)
    ctx = fake_ctx(n=64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    ctx.model = model
    strategy = seed_strategy("ast-prod", ctx)
    strategy.controller.tau = 1.3          # somewhere inside the batch's scores
    x, y = torch.randn(32, 1, 2, 2), torch.randint(0, 4, (32,))
    reference = copy.deepcopy(model)
    controller = copy.deepcopy(strategy.controller)
    # The engine: filter, forward, mean loss, backward.
    batch = strategy.filter_batch(Batch(torch.arange(32), torch.arange(32), x, y))
    model(torch.randn(32, 1, 2, 2))        # another forward in between (an updater's probe) is left alone
    loss = torch.nn.functional.cross_entropy(model(batch.x), batch.y, reduction="none").mean()
    loss.backward()
    # The seed: sum(mask * loss) / max(sum(mask), 1) on one full-batch forward.
    logits = reference(x)
    losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    mask = seed_mask(seed_significance(logits, y), controller.tau, 0.10).float()
    assert 2 < mask.sum() < 30
    ((losses * mask).sum() / mask.sum()).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    assert strategy.selected == int(mask.sum()) and strategy.candidates == 32
    assert strategy.controller.tau != controller.tau        # one velocity-form update per batch


def test_seed_two_pass_mode_trains_only_the_selected_rows_after_a_counted_forward():
    ctx = fake_ctx(n=64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4))
    calls = []
    ctx.forward_fn = lambda x: (calls.append(len(x)), model(x))[1]
    strategy = seed_strategy("ast-two", ctx)
    strategy.controller.tau = 1.0
    x, y = torch.randn(40, 1, 2, 2), torch.randint(0, 4, (40,))
    batch = strategy.filter_batch(Batch(torch.arange(40), torch.arange(40) + 7, x, y))
    assert calls == [40]
    s = seed_significance(model(x), y)
    expected = seed_mask(s, 1.0, 0.05).nonzero().squeeze(1)
    assert torch.equal(batch.positions, expected) and torch.equal(batch.index, expected + 7)
    assert torch.equal(batch.x, x[expected])
