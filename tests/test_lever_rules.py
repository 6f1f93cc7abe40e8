"""The levers' rules (edge_sel/engine/levers/levers.py) one function at a time, in milliseconds:
which levers a config turns on, the one-line refusals, what they build from the source memory and
RDumb's reset rule at its boundary. tests/test_levers.py runs them inside real fine-tunes."""

from pathlib import Path

import pytest
import torch
from torch import nn

from edge_sel.config import TrainConfig
from edge_sel.data import IndexedDataset
from edge_sel.engine.levers import levers as lv
from edge_sel.engine.levers.anchors import Memory
from edge_sel.engine.levers.replay import AnchorReplay
from edge_sel.errors import InputError


def anchors(n: int) -> IndexedDataset:
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    return IndexedDataset(images, torch.arange(n) % 2, torch.arange(n), ["a", "b"], name="anchors")


def memory(model: nn.Module, replay: int = 6) -> Memory:
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    fisher = {k: torch.ones_like(v) for k, v in state.items()}
    return Memory(anchors(replay), anchors(4), fisher, state, {}, Path("/ckpt"))


def test_a_lever_is_on_when_its_field_is_set_and_not_zero():
    assert lv.levers_on(TrainConfig()) == []
    cfg = TrainConfig(ewc=0.5, replay=0.2, bn_anchor_share=0.5, reset_forgetting=0.0, bn_conditions=3)
    # reset_forgetting 0 is "on" only when set to a non-zero allowance: 0.0 reads as off
    assert lv.levers_on(cfg) == ["--ewc", "--replay", "--bn-anchor-share", "--bn-conditions"]
    assert lv.levers_on(TrainConfig(reset_forgetting=5.0)) == ["--reset-forgetting"]


@pytest.mark.parametrize("cfg, message", [
    (TrainConfig(ewc=1.0, backend="ort"), "--ewc: needs --backend torch (ORT artifacts fix the loss"),
    (TrainConfig(replay=0.2, backend="ort"), "--replay: needs --backend torch"),
    (TrainConfig(ewc=1.0, sparsity="lottery"), "--ewc: not with --sparsity lottery: the lottery mask holds pruned"),
    (TrainConfig(reset_forgetting=3.0, sparsity="lottery"),
     "--reset-forgetting: not with --sparsity lottery: a reset to the dense source weights"),
    (TrainConfig(bn_anchor_share=0.5), "--bn-anchor-share: needs --bn-adapt N (the share is of the N"),
])
def test_a_lever_that_cannot_apply_is_refused_naming_its_option(cfg, message):
    with pytest.raises(InputError) as e:
        lv.check_lever_options(cfg)
    assert str(e.value).startswith(message)


def test_levers_that_can_apply_pass_their_checks():
    lv.check_lever_options(TrainConfig(ewc=1.0, replay=0.2, sparsity="mask"))
    lv.check_lever_options(TrainConfig(replay=0.2, sparsity="lottery"))          # replay works with a ticket
    lv.check_lever_options(TrainConfig(bn_anchor_share=0.5, bn_adapt=100))
    lv.check_lever_options(TrainConfig(backend="ort"))                          # no lever: nothing to refuse


def test_every_lever_on_needs_the_source_memory():
    model = nn.Linear(3, 2)
    lv.check_levers_memory(TrainConfig(), None, Path("/ckpt"))                  # no lever: no memory needed
    lv.check_levers_memory(TrainConfig(replay=0.2), memory(model), Path("/ckpt"))
    for cfg, flag in ((TrainConfig(replay=0.2), "--replay"), (TrainConfig(ewc=1.0, replay=0.2), "--ewc"),
                      (TrainConfig(bn_conditions=2), "--bn-conditions")):
        with pytest.raises(InputError) as e:
            lv.check_levers_memory(cfg, None, Path("/old/ckpt"))
        assert str(e.value).startswith(f"{flag}: the checkpoint /old/ckpt has no anchor set")


def test_the_objective_is_cross_entropy_plus_the_fisher_penalty_capped_at_one_step():
    model = nn.Linear(3, 2)
    plain = lv.make_objective(TrainConfig(label_smoothing=0.1), model, None)
    assert plain.name == "cross-entropy" and plain.penalties == [] and plain.label_smoothing == 0.1
    cfg = TrainConfig(ewc=30.0, lr=0.05)
    objective = lv.make_objective(cfg, model, memory(model))
    assert objective.name == "cross-entropy+fisher"
    (penalty,) = objective.penalties
    # Every entry's weight is 30 (a flat Fisher): above 1 / lr = 20 all 8 entries are capped ...
    assert penalty.weight == 30.0 and penalty.capped == 8
    # ... below 1 / lr = 33.3 none is.
    assert lv.make_objective(TrainConfig(ewc=30.0, lr=0.03), model, memory(model)).penalties[0].capped == 0
    with pytest.raises(InputError) as e:
        lv.make_objective(cfg, model, None)
    assert str(e.value).startswith("--ewc: the starting checkpoint has no anchor set")


@pytest.mark.parametrize("start, source, allowed, reset", [
    (0.50, 0.75, 25.0, False),      # exactly the allowance below (25 points, exact in floats): kept
    (0.4999, 0.75, 25.0, True),     # past it: reset
    (0.96, 0.95, 0.0, False),       # above the source
    (0.94, 0.95, 0.0, True),
])
def test_the_reset_rule_counts_points_of_accuracy(start, source, allowed, reset):
    assert lv.forgot_too_much(start, source, allowed) is reset


def test_replay_is_built_only_under_its_option_from_the_replay_anchors():
    model = nn.Linear(3, 2)
    assert lv.make_replay(TrainConfig(), None, "cpu", [0.5], [0.25], torch.contiguous_format) is None
    cfg = TrainConfig(replay=0.25, batch_size=16, seed=4, augment=False)
    replay = lv.make_replay(cfg, memory(model, replay=6), "cpu", [0.5], [0.25], torch.channels_last)
    assert isinstance(replay, AnchorReplay)
    assert replay.rows == 4 and len(replay.anchors) == 6 and replay.augment is False
    assert replay.seed == 4 + 1_000_003 and replay.memory_format == torch.channels_last
    assert replay.mean.tolist() == [0.5] and replay.std.tolist() == [0.25]
    # The anchors go to the run's device (a meta device here stands in for a GPU: nothing is computed).
    assert lv.make_replay(cfg, memory(model), "meta", [0.5], [0.25], torch.contiguous_format).anchors.images.is_meta
    with pytest.raises(InputError) as e:
        lv.make_replay(cfg, None, "cpu", [0.5], [0.25], torch.contiguous_format)
    assert str(e.value).startswith("--replay: the starting checkpoint has no anchor set")
