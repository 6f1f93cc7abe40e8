"""Per-class embarrassment E_c / confidence C_c, and class focus built on them."""

import math

import pytest
import torch

from edge_sel.engine.evaluation.evaluate import EmbarrassmentMeter
from edge_sel.methods.base import Plan, RunContext, Strategy
from edge_sel.methods.select.embarrassment import ClassFocus, class_shares, quotas, take
from sel_helpers import tiny_context


def ce(z, y, t):
    """Cross-entropy of one row of logits divided by t, written out by hand."""
    scaled = [v / t for v in z]
    return math.log(sum(math.exp(v) for v in scaled)) - scaled[y]


def test_embarrassment_matches_hand_computation_over_two_batches():
    t = 1.5
    batches = [([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0]], [0, 1, 0]),
               ([[3.0, -2.0, 0.0]], [1])]
    meter = EmbarrassmentMeter(num_classes=3, temperature=t, device="cpu")
    for z, y in batches:
        meter.add(torch.tensor(z), torch.tensor(y))
    e0 = (ce([2.0, 0.0, -1.0], 0, t) + ce([1.0, 1.0, 1.0], 0, t)) / 2
    e1 = (ce([0.0, 1.0, 0.5], 1, t) + ce([3.0, -2.0, 0.0], 1, t)) / 2
    values = meter.values()
    assert values[0] == pytest.approx(e0, abs=1e-6)
    assert values[1] == pytest.approx(e1, abs=1e-6)
    assert values[2] is None                       # class 2 never trained: no value, not zero
    assert ce([1.0, 1.0, 1.0], 0, t) == pytest.approx(math.log(3))
    # Confidence is clipped at zero once the class is embarrassing enough.
    assert EmbarrassmentMeter.confidence(values[0]) == pytest.approx(max(0.0, 1 - e0))
    assert EmbarrassmentMeter.confidence(values[1]) == 0.0 and e1 > 1
    assert EmbarrassmentMeter.confidence(None) is None


def test_temperature_softens_the_loss():
    z, y = torch.tensor([[4.0, 0.0]]), torch.tensor([0])
    cold, warm = EmbarrassmentMeter(2, 1.0, "cpu"), EmbarrassmentMeter(2, 1.5, "cpu")
    cold.add(z, y)
    warm.add(z, y)
    assert warm.values()[0] == pytest.approx(ce([4.0, 0.0], 0, 1.5))
    assert warm.values()[0] > cold.values()[0]


def test_shares_follow_embarrassment_above_the_floor():
    shares = class_shares([3.0, 1.0, 0.0, None], floor=0.1)
    # (1 - 4 x 0.1) = 0.6 of the budget follows E; None takes the mean of the others (4/3).
    total = 3 + 1 + 0 + 4 / 3
    assert shares == pytest.approx([0.1 + 0.6 * 3 / total, 0.1 + 0.6 * 1 / total, 0.1,
                                    0.1 + 0.6 * (4 / 3) / total])
    assert sum(shares) == pytest.approx(1.0)
    assert class_shares([0.0, 0.0], floor=0.25) == [0.5, 0.5]


def test_quotas_sum_to_the_budget():
    q = quotas([0.5, 0.3, 0.2], 7)
    assert sum(q) == 7 and q == [4, 2, 1]


def test_take_cycles_a_small_pool():
    g = torch.Generator().manual_seed(0)
    got = take(torch.tensor([5, 6, 7]), 7, g)
    assert len(got) == 7
    assert sorted(got.tolist()[:3]) == [5, 6, 7] and sorted(got.tolist()[3:6]) == [5, 6, 7]


class FixedPlan(Strategy):
    def plan(self, epoch):
        return Plan(torch.arange(len(self.ctx.train)), None, {"stage": 3})


def test_class_focus_moves_budget_to_embarrassed_classes():
    ctx = tiny_context(num_classes=4, per_class=30)
    focus = ClassFocus(FixedPlan(), floor=0.05)
    focus.setup(ctx)
    first = focus.plan(0)
    assert first.info["class_budget"] == [30, 30, 30, 30] and first.info["stage"] == 3
    names = ctx.train.class_names
    metrics = {f"E_{names[0]}": 2.0, f"E_{names[1]}": 0.5, f"E_{names[2]}": 0.5, f"E_{names[3]}": 1.0}
    focus.end_epoch(0, metrics)
    plan = focus.plan(1)
    counts = torch.bincount(ctx.train.labels[plan.positions], minlength=4).tolist()
    expected = quotas(class_shares([2.0, 0.5, 0.5, 1.0], 0.05), 120)
    assert counts == expected == plan.info["class_budget"]
    assert len(plan.positions) == 120                     # the budget is the wrapped plan's
    assert counts[0] > 30 > counts[1]
    # Oversampled class 0 repeats each of its samples at most ceil(quota / 30) times.
    reps = torch.bincount(plan.positions[ctx.train.labels[plan.positions] == 0])
    assert reps.max().item() <= math.ceil(counts[0] / 30)


def test_focus_floor_keeps_every_class_alive():
    ctx = tiny_context(num_classes=4, per_class=30)
    focus = ClassFocus(FixedPlan())        # default floor: 0.5 / classes
    focus.setup(ctx)
    names = ctx.train.class_names
    focus.end_epoch(0, {f"E_{names[0]}": 5.0, f"E_{names[1]}": 0.0, f"E_{names[2]}": 0.0, f"E_{names[3]}": 0.0})
    counts = torch.bincount(ctx.train.labels[focus.plan(1).positions], minlength=4).tolist()
    assert min(counts) == 15                              # 0.125 of 120
    assert isinstance(ctx, RunContext)


def test_focus_floor_above_a_fair_share_is_bad_input():
    from edge_sel.errors import InputError
    with pytest.raises(InputError, match="--class-focus-floor 0.3: 4 classes"):
        ClassFocus(FixedPlan(), floor=0.3).setup(tiny_context(num_classes=4))
