"""The Sundew gate's novelty path (edge_sel/methods/select/sundew.py) piece by piece: the FLOPs
charged for a window's decisions and a top-up as exact counts, the keep probability of one
candidate, a window's sequential decisions and a top-up against plain loops, and the gate's saved
state with its memory of kept frames. Tiny tensors and no model, so these run in milliseconds."""

import math

import numpy as np
import pytest
import torch

from gating_helpers import duplicated_scenes, novelty_gate, novelty_gate_on
from edge_sel.methods.base import Plan, RunContext
from edge_sel.methods.select.novelty import fingerprint_flops
from edge_sel.methods.select.sundew import decision_flops, top_up_flops

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("args, flops", [((10, 3, 0.1, True), 10 * 14 + 30), ((10, 3, 0.0, False), 10 * 9 + 30),
                                         ((7, 0, 0.05, False), 7 * 13), ((4, 4, 0.0, True), 4 * 10 + 16),
                                         ((0, 0, 1.0, True), 0), ((5, 2, 1e-9, False), 5 * 13 + 10)])
def test_a_window_pass_costs_its_novelty_score_probability_and_draw_per_candidate(args, flops):
    """4 (novelty) + 3 (score) + 5 with a temperature or 1 without + 1 with the floor + 1 (draw)
    per candidate, and one comparison per candidate for each frame kept: a figure the run reports
    as scoring FLOPs."""
    assert decision_flops(*args) == flops


@pytest.mark.parametrize("args, flops", [((10, 2, 3), 20 + 3 * 10 * 9), ((6, 0, 1), 54), ((8, 5, 0), 40)])
def test_a_top_up_costs_the_raise_to_each_kept_frame_and_nine_per_candidate_per_frame_added(args, flops):
    assert top_up_flops(*args) == flops


def test_one_candidates_keep_probability():
    """Mutants: the sigmoid, the temperature's division, the cut-off below -60, the hard threshold
    (strictly above tau), the floor when unbiased."""
    soft = novelty_gate(gate_temperature=0.05)
    assert soft._probability_scalar(0.6, 0.5) == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-12)
    assert soft._probability_scalar(0.4, 0.5) == pytest.approx(1 / (1 + math.exp(2.0)), rel=1e-12)
    assert soft._probability_scalar(0.5 - 0.05 * 60, 0.5) == 0.0                  # z = -60 exactly
    assert soft._probability_scalar(0.5 - 0.05 * 59.9, 0.5) == pytest.approx(1 / (1 + math.exp(59.9)), rel=1e-6)
    hard = novelty_gate()
    assert hard._probability_scalar(0.6, 0.5) == 1.0 and hard._probability_scalar(0.5, 0.5) == 0.0
    floored = novelty_gate(unbiased=True, keep_floor=0.2)
    assert floored._probability_scalar(0.1, 0.5) == 0.2 and floored._probability_scalar(0.9, 0.5) == 1.0
    assert novelty_gate(unbiased=True, gate_temperature=0.1, keep_floor=0.3)._probability_scalar(0.5, 0.5) == 0.5


def test_the_novelty_factor_weighs_novelty_by_the_option():
    g = novelty_gate(novelty=0.25)
    torch.testing.assert_close(g._factor(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.75, 0.875, 1.0]))


def reference_decide(sig, near, cos, draws, tau, weight, radius, temperature):
    best = near.copy()
    keep, novelty, p = [], [], []
    for i in range(len(sig)):
        n = min(1.0, max(0.0, (1 - best[i]) / radius))
        s = sig[i] * ((1 - weight) + weight * n)
        prob = (1 / (1 + math.exp(-(s - tau) / temperature))) if temperature > 0 else float(s > tau)
        novelty.append(n)
        p.append(prob)
        keep.append(bool(draws[i] < prob))
        if keep[-1]:
            best = np.maximum(best, cos[i])
    return keep, novelty, p


def window():
    """Five candidates: 0 and 1 the same scene, 2 near them, 3 and 4 another scene; the memory
    already holds something like 4."""
    cos = np.array([[1.0, 1.0, 0.95, 0.2, 0.1], [1.0, 1.0, 0.95, 0.2, 0.1], [0.95, 0.95, 1.0, 0.3, 0.2],
                    [0.2, 0.2, 0.3, 1.0, 0.99], [0.1, 0.1, 0.2, 0.99, 1.0]])
    near = np.array([0.0, 0.0, 0.1, 0.5, 0.97])
    sig = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    draws = np.array([0.5, 0.1, 0.4, 0.3, 0.2])
    return sig, near, cos, draws


@pytest.mark.parametrize("options", [{}, {"gate_temperature": 0.1}, {"novelty": 0.5, "novelty_radius": 0.2},
                                     {"gate_temperature": 0.05, "unbiased": True}])
def test_a_windows_decisions_are_sequential_and_counted(options):
    """Mutants: novelty from the best cosine so far and its clip, the combined score, a kept frame
    raising its scene-mates' cosine, the draw's comparison, the pass's FLOPs."""
    g = novelty_gate(**options)
    g.novelty_flops = 7
    sig, near, cos, draws = window()
    keep, novelty, p = g._decide(sig, near, cos, draws, 0.3)
    ref_keep, ref_novelty, ref_p = reference_decide(sig, near, cos, draws, 0.3, g.cfg.novelty, g.cfg.novelty_radius,
                                                    g.cfg.gate_temperature)
    if g.cfg.unbiased:
        ref_p = [max(v, g.cfg.keep_floor) for v in ref_p]
        ref_keep = None
    assert keep.dtype == bool and novelty.tolist() == pytest.approx(ref_novelty) and p.tolist() == pytest.approx(ref_p)
    if ref_keep is not None:
        assert keep.tolist() == ref_keep
    assert g.novelty_flops == 7 + decision_flops(5, int(keep.sum()), g.cfg.gate_temperature, g.cfg.unbiased)
    assert near.tolist() == [0.0, 0.0, 0.1, 0.5, 0.97]          # the caller's array is not changed


def test_the_hard_threshold_window_keeps_one_frame_of_a_scene():
    g = novelty_gate()
    g.novelty_flops = 0
    sig, near, cos, draws = window()
    keep, novelty, _ = g._decide(sig, near, cos, draws, 0.4)
    assert keep.tolist() == [True, False, False, True, False]
    assert novelty.tolist() == pytest.approx([1.0, 0.0, 0.5, 1.0, 0.1])


def test_a_top_up_adds_the_most_significant_novel_candidates_one_at_a_time():
    """Mutants: the best cosine raised to the frames kept before and to each one added, the novelty
    and score of what is left, kept ones masked, the count reached, the FLOPs charged."""
    g = novelty_gate(novelty=1.0, novelty_radius=0.1)
    sig, near, cos, _ = window()
    g._window = (torch.tensor(near, dtype=torch.float32), torch.tensor(cos, dtype=torch.float32))
    g.novelty_flops = 5
    keep = torch.tensor([True, False, False, False, False])
    got = g._top_up(torch.tensor(sig, dtype=torch.float32), keep, 3)
    # after 0: novelty [., 0, 0.5, 1, 0.3] -> scores [., 0, 0.35, 0.6, 0.285]: 3; then 4's cosine 0.99 -> 0.1 x 0.95
    # against 2's 0.35: 2
    assert got.tolist() == [True, False, True, True, False]
    assert keep.tolist() == [True, False, False, False, False]          # a copy
    assert g.novelty_flops == 5 + top_up_flops(5, 1, 2)


def test_the_gate_keeps_one_frame_per_scene_and_charges_every_pass():
    g, charged = novelty_gate_on(0.25)
    passes = []
    decide = g._decide

    def counted(sig, *args):
        keep, novelty, p = decide(sig, *args)
        passes.append((len(sig), int(keep.sum())))
        return keep, novelty, p
    g._decide = counted
    plan = g.select(0, Plan(torch.arange(16)))
    assert sorted((plan.positions // 4).tolist()) == [0, 1, 2, 3]
    assert len(passes) == 33                 # two bisections of 16 and the decision itself
    d = 32
    expected = fingerprint_flops(16, [3, 8, 8]) + 2 * 16 * 16 * d + sum(decision_flops(n, k, 0.0, False)
                                                                        for n, k in passes)
    assert charged == [(0, expected)] and plan.info["novelty_flops"] == expected
    assert plan.info["novelty_kept_mean"] == pytest.approx(1.0)
    assert g.memory.count == 4


def test_the_gates_state_carries_its_memory_of_kept_frames():
    g, _ = novelty_gate_on(0.25)
    g.select(0, Plan(torch.arange(16)))
    state = g.state_dict()
    assert set(state) == {"store", "controller", "target", "candidates", "novelty_memory"}
    assert state["candidates"] == 16 and int(state["novelty_memory"]["count"]) == 4
    other, _ = novelty_gate_on(0.25)
    other.load_state_dict(state)
    assert other.candidates == 16 and other.memory.count == 4
    assert torch.equal(other.memory.bank, g.memory.bank)
    assert other.controller.state_dict() == g.controller.state_dict()
    plain, _ = novelty_gate_on(0.25, novelty=0.0)
    assert plain.memory is None and "novelty_memory" not in plain.state_dict()
    plain.load_state_dict({k: v for k, v in plain.state_dict().items()})
    fresh, _ = novelty_gate_on(0.25)
    fresh.load_state_dict({k: v for k, v in state.items() if k != "novelty_memory"})      # an older checkpoint
    assert fresh.memory.count == 0
    older, _ = novelty_gate_on(0.25)
    older.load_state_dict({k: v for k, v in state.items() if k != "candidates"})
    assert older.candidates == 0 and older.memory.count == 4


def test_the_epochs_trace_summary():
    """Mutants: each field's value and name: figures the run records per epoch."""
    from edge_sel.methods.select.sundew import trace_summary
    assert trace_summary([0.2, 0.5, 0.3], 3, 10, 0.25) == {
        "threshold_start": 0.2, "threshold_end": 0.3, "threshold_mean": pytest.approx(1 / 3), "threshold_min": 0.2,
        "threshold_max": 0.5, "activation_ema": 0.25, "gate_activation": 0.3, "gate_windows": 3}
    assert trace_summary([0.4], 0, 0, 0.1)["gate_activation"] is None
    assert trace_summary([], 2, 8, 0.5) == {"gate_activation": 0.25, "activation_ema": 0.5}
    assert trace_summary([], 0, 0, 0.5) == {"gate_activation": None, "activation_ema": 0.5}


def test_setup_sizes_the_memory_and_the_hardness_store_from_the_options():
    g, _ = novelty_gate_on(0.25, novelty_memory=7, dih_gamma=0.8)
    assert g.memory.bank.shape == (7, 32) and g.store.gamma == 0.8 and g.store.num_classes == 2
    assert torch.equal(g.store.index, torch.arange(16)) and g.anneal_from == 3
    annealed, _ = novelty_gate_on(0.25, anneal=0.34)
    assert annealed.anneal_from == 1
    assert g.controller.target == 0.25 and g.controller.tau == pytest.approx(0.75)
    assert g.candidates == 0 and g.target.value == 0.25


def test_nothing_is_gated_in_the_annealed_tail_for_no_candidates_or_at_a_target_of_one():
    g, charged = novelty_gate_on(0.25, anneal=0.34)
    plan = g.select(1, Plan(torch.arange(16)))              # the tail's first epoch
    assert plan.positions.tolist() == list(range(16))
    assert plan.info == {"target_activation": 0.25, "gate_activation": 1.0, "annealing": True} and charged == []
    empty = g.select(0, Plan(torch.arange(0)))
    assert empty.info == {"target_activation": 0.25, "gate_activation": None, "annealing": False}
    assert g.candidates == 0
    full, _ = novelty_gate_on(1.0)
    assert full.select(0, Plan(torch.arange(16))).info == {"target_activation": 1.0, "gate_activation": 1.0,
                                                           "annealing": False}
    one, _ = novelty_gate_on(0.25)
    assert "unseen_share" in one.select(0, Plan(torch.arange(1))).info         # one candidate is gated


def test_a_plain_epochs_plan_records_what_the_gate_did():
    """Mutants: the record's fields (target, unseen share, trace), the candidates counted."""
    g, charged = novelty_gate_on(0.5, novelty=0.0, gate_temperature=0.05)
    plan = g.select(0, Plan(torch.arange(16)))
    n = len(plan.positions)
    assert g.candidates == 16 and charged == []
    info = plan.info
    assert info["target_activation"] == 0.5 and info["unseen_share"] == 1.0
    assert info["gate_activation"] == n / 16 and info["gate_windows"] == 1
    assert info["activation_ema"] == g.controller.ema
    assert "novelty_flops" not in info and plan.weights is None


def test_observe_passes_the_batch_and_the_runs_epoch_and_learning_rate_to_the_store():
    g, _ = novelty_gate_on(0.25)
    seen = []
    g.store.observe = lambda *args: seen.append(args)
    batch = type("B", (), {"index": torch.tensor([1, 2]), "y": torch.tensor([0, 1])})()
    losses, logits = torch.tensor([0.5, 0.7]), torch.zeros(2, 2)
    g.ctx.state.update({"epoch": 4, "lr": 0.05})
    g.observe(batch, losses, logits)
    assert len(seen) == 1 and seen[0][0] is batch.index and seen[0][1] is losses and seen[0][2] is logits
    assert seen[0][3] is batch.y and seen[0][4:] == (4, 0.05)
    g.ctx.state.clear()
    g.observe(batch, losses, logits)
    assert seen[1][4:] == (0, 0.0)


def test_unbiased_weights_are_inverse_keep_probabilities_scaled_to_mean_one():
    """Never-trained samples all score 1: one keep probability, so every weight is 1."""
    g, _ = novelty_gate_on(0.5, novelty=0.0, gate_temperature=0.05, unbiased=True, keep_floor=0.2)
    plan = g.select(0, Plan(torch.arange(16)))
    assert plan.weights is not None and len(plan.weights) == len(plan.positions) > 0
    torch.testing.assert_close(plan.weights, torch.ones(len(plan.positions)))


@pytest.mark.parametrize("unseen", ["first", "neutral"])
def test_a_never_trained_sample_scores_one_or_the_seen_samples_mean(unseen):
    """Mutants: the seen mask inverted, the neutral option's name and condition, the mean taken
    over the unseen instead of the seen, the unseen share recorded."""
    g, _ = novelty_gate_on(0.5, novelty=0.0, unseen=unseen)
    ids = torch.tensor([0, 1, 2, 3])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    g.store.observe(ids, torch.tensor([0.2, 2.1, 0.7, 0.05]), logits, torch.zeros(4, dtype=torch.long), 0, 0.1)
    scored = []
    gate = g._gate
    g._gate = lambda sig, target, prints: scored.append(sig.clone()) or gate(sig, target, prints)
    plan = g.select(0, Plan(torch.arange(16)))
    sig = scored[0]
    assert plan.info["unseen_share"] == 0.75
    seen_sig = g.significance(g.store)[:4].float()
    torch.testing.assert_close(sig[:4], seen_sig)
    expect = seen_sig.mean().item() if unseen == "neutral" else 1.0
    torch.testing.assert_close(sig[4:], torch.full((12,), expect))
    assert seen_sig.max().item() < 1.0


def test_the_hard_threshold_keeps_only_what_lies_strictly_above_it():
    """Mutants: the sigmoid used at temperature 0 (0/0 at a tie), >= for >."""
    p = novelty_gate().keep_probability(torch.tensor([0.5, 0.6, 0.4]), 0.5)
    assert p.tolist() == [0.0, 1.0, 0.0]
    soft = novelty_gate(gate_temperature=0.1).keep_probability(torch.tensor([0.5, 0.7]), 0.5)
    torch.testing.assert_close(soft, torch.tensor([0.5, 1 / (1 + math.exp(-2.0))]))


def test_the_floor_tops_a_window_up_to_its_share_of_the_minimum_activation():
    """Mutants: the floor's size (min_activation x candidates, capped at the target's share), < for
    <=, the top candidates added; with novelty, the top-up's arguments. The activation a run
    reports depends on it."""
    ds = duplicated_scenes()
    sizes = []
    for seed in range(8):
        g = novelty_gate(target_activation=0.5, min_activation=0.5, novelty=0.0, gate_temperature=0.5)
        g.setup(RunContext(ds, ds, None, 3, torch.Generator().manual_seed(seed), torch.device("cpu"), [0.5], [0.25],
                           16))
        sizes.append(len(g.select(0, Plan(torch.arange(16))).positions))
    assert min(sizes) == 8 and max(sizes) > 8             # never below the floor, reached from below
    novel, _ = novelty_gate_on(0.5, min_activation=0.5)
    plan = novel.select(0, Plan(torch.arange(16)))
    # the frames the seeded decisions keep, then the top-up's, eight in all, every scene present
    assert sorted(plan.positions.tolist()) == [0, 1, 4, 8, 12, 13, 14, 15]
    capped, _ = novelty_gate_on(0.25, min_activation=0.5)
    assert len(capped.select(0, Plan(torch.arange(16))).positions) == 4        # the target's share wins


def test_the_draws_come_from_the_runs_generator():
    plans = []
    for noise in (1, 2):
        g, _ = novelty_gate_on(0.5, novelty=0.0, gate_temperature=0.5)
        torch.manual_seed(noise)
        plans.append(g.select(0, Plan(torch.arange(16))).positions.tolist())
    assert plans[0] == plans[1]


def test_an_epoch_that_keeps_nothing_records_no_novelty_mean():
    g, _ = novelty_gate_on(0.25)
    g.select(0, Plan(torch.arange(16)))
    again = g.select(1, Plan(torch.arange(16)))          # every candidate is now a remembered duplicate
    assert len(again.positions) == 0 and again.info["novelty_kept_mean"] is None


@pytest.mark.parametrize("sig, near, expect", [
    ([0.5, 0.9], [-1.0, 0.0], 1),        # novelty clipped at 1: 0.9 beats 0.5 (unclipped 10 and 9)
    ([0.5, 0.5], [1.2, 1.0], 0),         # clipped at 0: a tie, the first (unclipped -1 and 0)
    ([0.5, 0.6], [0.85, 0.9], 1),        # 1.5 clipped to 1: 0.6 beats 0.5 (0.75 unclipped)
])
def test_a_top_ups_novelty_is_clipped_to_zero_and_one(sig, near, expect):
    """Mutants: either bound of the clip dropped or moved, the radius multiplied."""
    g = novelty_gate(novelty=1.0, novelty_radius=0.1)
    g._window = (torch.tensor(near), torch.eye(2))
    g.novelty_flops = 0
    got = g._top_up(torch.tensor(sig), torch.zeros(2, dtype=torch.bool), 1)
    assert got.tolist() == [i == expect for i in range(2)]


def test_the_novelty_windows_threshold_is_the_middle_of_those_that_keep_the_target_share():
    """Mutants: the bisection's halving and step count, the two edges (<= and < the target), their
    mean: the threshold the record states at the epoch's start."""
    g, _ = novelty_gate_on(0.25)
    seen = []
    decide = g._decide

    def watched(sig, near, cos, draws, tau):
        seen.append((sig, near, cos, draws))
        return decide(sig, near, cos, draws, tau)
    g._decide = watched
    plan = g.select(0, Plan(torch.arange(16)))
    sig, near, cos, draws = seen[0]

    def lowest(meets):
        lo, hi = g.controller.lo, g.controller.hi
        for _ in range(16):
            mid = (lo + hi) / 2
            if meets(decide(sig, near, cos, draws, mid)[0].mean()):
                hi = mid
            else:
                lo = mid
        return hi
    bias = (lowest(lambda share: share <= 0.25) + lowest(lambda share: share < 0.25)) / 2
    assert lowest(lambda share: share <= 0.25) != lowest(lambda share: share < 0.25)
    assert plan.info["threshold_start"] == pytest.approx(bias, abs=1e-12)
