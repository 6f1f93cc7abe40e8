"""The SEL curriculum: stage tables, epoch scaling, difficulty pools and validation gates."""

import json

import pytest
import torch

from edge_sel.errors import InputError
from edge_sel.methods import make_strategy
from edge_sel.methods.select.curriculum import SelCurriculum
from edge_sel.methods.select.stages import DEFAULT_STAGES, StageSpec, allocate_epochs, format_stages, parse_stages
from sel_helpers import tiny_context


def test_default_table_is_the_seeds():
    stages = parse_stages(None)
    assert [(s.start, s.end, s.threshold, s.epochs) for s in stages] == [
        (0, 25, 0.30, 10), (20, 50, 0.45, 10), (40, 65, 0.58, 10), (60, 82, 0.68, 10), (78, 100, 0.76, 10)]
    # The seed's CIFAR-10 windows on pools of 5,000 per class (cap 2,000 never binds).
    capped = [StageSpec(s.start, s.end, s.threshold, s.epochs, 2000) for s in stages]
    assert [s.window(5000) for s in capped] == [(0, 1250), (1000, 2500), (2000, 3250), (3000, 4100), (3900, 5000)]
    assert parse_stages(format_stages(capped)) == capped
    assert format_stages(stages) == DEFAULT_STAGES.replace("0.30", "0.3")


def test_stage_files(tmp_path):
    js = tmp_path / "stages.json"
    js.write_text(json.dumps({"stages": [{"start": 0, "end": 60, "threshold": 0.5, "epochs": 3},
                                         {"start": 40, "end": 100, "cap": 7}]}))
    toml = tmp_path / "stages.toml"
    toml.write_text("[[stages]]\nstart = 0\nend = 60\nthreshold = 0.5\nepochs = 3\n"
                    "[[stages]]\nstart = 40\nend = 100\ncap = 7\n")
    expected = [StageSpec(0, 60, 0.5, 3), StageSpec(40, 100, None, 10, 7)]
    assert parse_stages(str(js)) == expected == parse_stages(str(toml))


@pytest.mark.parametrize("text,match", [
    ("0-25:0.3:10,50-40", "start < end"),
    ("0-25:1.5", "threshold"),
    ("0-25:0.3:0", "epochs"),
    ("zero-25", "cannot read"),
    ("/no/such/stages.json", "cannot read"),
])
def test_bad_tables_name_the_option(text, match):
    with pytest.raises(InputError, match=f"--stages.*{match}"):
        parse_stages(text)


def test_epoch_allocation_rule():
    assert allocate_epochs([10] * 5, 50) == [10] * 5          # a budget that covers the table keeps it
    assert allocate_epochs([10] * 5, 80) == [10] * 5
    assert allocate_epochs([10] * 5, 10) == [2] * 5           # scaled: every stage visited
    assert allocate_epochs([10] * 5, 12) == [3, 3, 2, 2, 2]
    assert allocate_epochs([5] + [10] * 5, 10) == [1, 2, 2, 2, 2, 1]
    assert allocate_epochs([10] * 5, 3) == [1, 1, 1, 0, 0]    # fewer epochs than stages
    assert allocate_epochs([1, 100], 5) == [1, 4]             # at least one epoch each


def losses_by_position(n):
    """A scorer whose loss makes even positions easy, decreasing with position among them."""
    pos = torch.arange(n, dtype=torch.float32)
    return torch.where(pos % 2 == 0, -pos, 1000 + pos)


class FakeScorer:
    def __init__(self, n):
        self.calls, self.n = [], n

    def __call__(self, positions=None, model=None):
        self.calls.append((positions, model))
        return losses_by_position(self.n)


@pytest.mark.parametrize("difficulty", ["warmup", "cold", "random"])
def test_pools_come_from_the_chosen_scorer(difficulty):
    ctx = tiny_context(num_classes=2, per_class=20)
    scorer = FakeScorer(len(ctx.train))
    ctx.score_fn = scorer
    sel = SelCurriculum(parse_stages("0-50:-:1,50-100:-:1"), difficulty)
    sel.setup(ctx)
    assert scorer.calls == []                                  # scored in the first plan, inside epoch 0
    plan = sel.plan(0)
    if difficulty == "random":
        assert scorer.calls == []                              # the control costs no scoring pass
        assert sorted(sel.pools[0].tolist()) == list(range(0, 40, 2))
        return
    (positions, model), = scorer.calls
    assert positions is None
    assert (model is ctx.model) == (difficulty == "warmup")   # cold: an untrained twin
    labels = ctx.train.labels
    for c, pool in enumerate(sel.pools):
        assert (labels[pool] == c).all() and len(pool) == 20
        losses = losses_by_position(len(ctx.train))[pool]
        assert torch.all(losses[1:] >= losses[:-1])           # easy to hard
    easy_half = set(sel.pools[0][:10].tolist()) | set(sel.pools[1][:10].tolist())
    assert set(plan.positions.tolist()) == easy_half
    assert plan.info["stage"] == 1 and ctx.state["stage"] == 1 and ctx.state["curriculum_stages"] == 2


def drive(sel, accuracies):
    """Run the strategy's epoch loop with made-up validation accuracies."""
    out = []
    for epoch, acc in enumerate(accuracies):
        if sel.finished():
            break
        plan = sel.plan(epoch)
        out.append((plan.info["stage"], sel.end_epoch(epoch, {"val_acc": acc})["stage_gate"]))
    return out


def curriculum(table, epochs, enforce=True, patience=2):
    ctx = tiny_context(epochs=epochs)
    sel = SelCurriculum(parse_stages(table), "random", enforce_gates=enforce, patience=patience)
    sel.setup(ctx)
    return sel


def test_gate_repeats_then_advances_on_validation_accuracy():
    sel = curriculum("0-50:0.5:2,50-100:0.9:2", epochs=20)
    got = drive(sel, [0.3, 0.3, 0.4, 0.45, 0.95, 0.95, 0.99])
    assert got == [(1, None), (1, "repeat"), (1, "repeat"), (1, "fail"), (2, None), (2, "pass")]
    assert sel.finished()


def test_gate_passes_early_in_a_repeat():
    sel = curriculum("0-50:0.5:2,50-100:0.9:1", epochs=20)
    assert drive(sel, [0.1, 0.2, 0.6, 0.95]) == [(1, None), (1, "repeat"), (1, "pass"), (2, "pass")]


def test_gate_not_enforced_records_but_never_repeats():
    sel = curriculum("0-50:0.5:1,50-100:0.9:1", epochs=20, enforce=False)
    assert drive(sel, [0.1, 0.1, 0.1]) == [(1, "fail"), (2, "fail")]


def test_repeats_never_starve_later_stages():
    # 4 epochs for a 2+2 table: one repeat fits only if stage 2 keeps an epoch.
    sel = curriculum("0-50:0.5:2,50-100:0.9:2", epochs=4)
    assert drive(sel, [0.1, 0.1, 0.1, 0.1, 0.1]) == [(1, None), (1, "repeat"), (1, "fail"), (2, "fail")]


def test_short_run_visits_every_stage_of_the_default_table():
    sel = curriculum(DEFAULT_STAGES, epochs=10)
    got = drive(sel, [1.0] * 12)
    assert [stage for stage, _ in got] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [gate for _, gate in got] == [None, "pass"] * 5


def test_loss_scaled_learning_rate_and_dense_warmup_stage():
    ctx = tiny_context(num_classes=4, per_class=30, epochs=20)
    sel = SelCurriculum(parse_stages("0-50:-:2"), "random", lr_loss_scale=2.0, easy_warmup_epochs=1,
                        easy_warmup_size=20)
    sel.setup(ctx)
    plan = sel.plan(0)
    # Easy warmup: ceil(20 / 4) = 5 per class (under 20% of 30 = 6), stage 0, dense.
    assert plan.info["stage"] == 0 and len(plan.positions) == 20 and ctx.state["stage_dense"] is True
    assert sel.lr_scale(torch.tensor(1.5)) == 1.0
    sel.end_epoch(0, {"val_acc": 0.1})
    plan = sel.plan(1)
    assert plan.info["stage"] == 1 and ctx.state["stage_dense"] is False and ctx.state["curriculum_stages"] == 1
    assert sel.lr_scale(torch.tensor(1.5)) == pytest.approx(4.0)    # 1 + 2 x loss
    assert sel.lr_scale(None) == 1.0


def test_registry_builds_sel_and_rejects_bad_options():
    assert isinstance(make_strategy("sel", {}), SelCurriculum)
    assert make_strategy("sel", {"class_focus": True}).name == "sel+focus"
    assert make_strategy("dense", {"class_focus": True}).name == "dense+focus"
    with pytest.raises(InputError, match="--difficulty"):
        make_strategy("sel", {"difficulty": "hardest"})
    with pytest.raises(InputError, match="--stage-patience"):
        make_strategy("sel", {"stage_patience": -1})
