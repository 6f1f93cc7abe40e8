"""Threshold controllers on a synthetic stream of significance values that drifts the way a learning
model's does: our default loop tracks its target; the AST seed's loop sits pinned at its floor."""

from types import SimpleNamespace

import pytest
import torch

from edge_sel.methods.select.ast_seed import SEED_PROFILES, seed_controller, seed_mask
from edge_sel.methods.select.gating_config import GatingConfig
from edge_sel.methods.select.sundew import SundewGate
from edge_sel.methods.select.threshold_control import PositionalPI, SeedVelocityPI

# One torch thread: mutmut runs these in forked workers, where a thread pool started before the
# fork spins until the worker's CPU limit and a mutant would be scored a timeout.
pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, N, BATCH = 30, 5000, 128


def drifting_stream(unseen: bool = False, concentration: float = 6.0):
    """Per epoch, N significances in [0, 1] whose mean falls from 0.6 to 0.15 (the model learns);
    with `unseen`, a share 0.7^epoch of never-trained samples scores 1 (all tied)."""
    torch.manual_seed(0)
    for e in range(EPOCHS):
        mean = 0.6 - 0.45 * e / (EPOCHS - 1)
        beta = torch.distributions.Beta(torch.tensor(mean * concentration), torch.tensor((1 - mean) * concentration))
        s = beta.sample((N,))
        if unseen:
            s[: int(0.7 ** e * N)] = 1.0
            s = s[torch.randperm(N)]
        yield s


def sundew_gate(target=0.3, **kw) -> SundewGate:
    gate = SundewGate(GatingConfig(target_activation=target, **kw))
    gate.ctx = SimpleNamespace(batch_size=BATCH, generator=torch.Generator().manual_seed(1))
    return gate


def epoch_rates(gate, stream, target):
    rates = []
    for s in stream:
        keep, _, thresholds = gate._gate(s, target)
        rates.append(keep.float().mean().item())
        assert all(gate.controller.lo <= t <= gate.controller.hi for t in thresholds)
    return rates


@pytest.mark.parametrize("unseen", [False, True])
@pytest.mark.parametrize("target", [0.3, 0.5])
def test_default_sundew_loop_tracks_its_target_within_two_points(unseen, target):
    rates = epoch_rates(sundew_gate(target), drifting_stream(unseen), target)
    after_warm_in = rates[2:]
    assert max(abs(r - target) for r in after_warm_in) <= 0.02, rates
    assert abs(sum(after_warm_in) / len(after_warm_in) - target) <= 0.005


def test_pi_alone_tracks_the_drift_without_the_feed_forward():
    """The PI terms do the tracking by themselves: freeze the per-epoch guess at its start value."""
    gate = sundew_gate(0.3)
    gate.controller.set_bias = lambda bias: None
    rates = epoch_rates(gate, drifting_stream(), 0.3)
    assert max(abs(r - 0.3) for r in rates[2:]) <= 0.02, rates


def test_sundew_loop_tracks_with_a_hard_threshold_and_with_the_unbiased_floor():
    for kw in ({"gate_temperature": 0.0}, {"unbiased": True, "keep_floor": 0.1}):
        rates = epoch_rates(sundew_gate(0.3, **kw), drifting_stream(unseen=True), 0.3)
        assert max(abs(r - 0.3) for r in rates[2:]) <= 0.02, (kw, rates)


def seed_run(profile: str):
    """The seed's per-batch loop over the same stream: s > tau with its top-k fallback."""
    ctl = seed_controller(profile)
    min_share = SEED_PROFILES[profile]["min_share"]
    taus, rates = [], []
    for s in drifting_stream():
        for lo in range(0, N, BATCH):
            mask = seed_mask(s[lo: lo + BATCH], ctl.tau, min_share)
            taus.append(ctl.tau)
            rates.append(mask.float().mean().item())
            ctl.update(rates[-1])
    return taus, rates


def test_ast_prod_controller_reproduces_the_seed_pinned_at_its_floor():
    taus, rates = seed_run("ast-prod")
    warm_in = next(i for i, t in enumerate(taus) if t == 0.5)
    assert 200 < warm_in < 600                     # from tau0 = 3.0 down to the floor in a few hundred batches
    assert all(t == 0.5 for t in taus[warm_in:])   # and never leaves it
    target = SEED_PROFILES["ast-prod"]["target"]
    late = rates[len(rates) // 2:]
    assert sum(late) / len(late) < target - 0.15     # far below its 0.40 target...
    assert min(late) >= 0.09                         # ...held up only by the 10% top-k fallback


def test_default_controller_on_the_seed_scale_stream_is_not_pinned():
    """Same stream, our loop with its own bounds: the threshold moves inside them."""
    gate = sundew_gate(0.4)
    thresholds = []
    for s in drifting_stream():
        _, _, th = gate._gate(s, 0.4)
        thresholds += th
    assert min(thresholds) > gate.controller.lo and max(thresholds) < gate.controller.hi


def test_positional_pi_anti_windup_freezes_the_integral_at_a_bound():
    pi = PositionalPI(target=0.3, tau0=1.45, kp=0.3, ki=0.1, alpha=1.0, lo=0.0, hi=1.5)
    for _ in range(200):                # far too many pass even at the top bound
        pi.update(1.0)
    assert pi.tau == 1.5
    wound = pi.integral
    assert wound < 1.0                  # the integral stopped growing once the output hit the bound
    pi.update(0.3)                      # on target again: the threshold leaves the bound at once
    assert pi.tau < 1.5


def test_seed_velocity_loop_leaks_its_integral_at_a_bound():
    pi = SeedVelocityPI(target=0.4, tau0=0.5, kp=0.005, ki=1e-4, alpha=0.1, lo=0.5, hi=10.0)
    pi.integral = -50.0
    pi.update(0.1)
    assert pi.tau == 0.5 and pi.integral == pytest.approx(-45.0)
