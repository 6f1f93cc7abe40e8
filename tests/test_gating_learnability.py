"""The reworked Sundew signals: likely-mislabelled samples score 0 under `learnability`, and with
`--unseen neutral` a never-trained sample scores the seen candidates' mean instead of first."""

import math

import torch

from edge_sel.methods.select.hardness import HardnessStore
from edge_sel.methods.select.significance import learnability, likely_mislabelled, loss_entropy

from gating_helpers import fake_ctx, make_gate, plan_of, train_epoch


def store_after_one_visit(logits: torch.Tensor, labels: torch.Tensor) -> HardnessStore:
    store = HardnessStore(torch.arange(len(labels)), logits.shape[1])
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    store.observe(torch.arange(len(labels)), losses, logits, labels, epoch=0, lr=0.1)
    return store


def test_a_confident_prediction_of_another_class_flags_the_sample_and_scores_it_zero():
    # Thresholds: the mean p(label) over the samples labelled with a class:
    # class 0: (0.70 + 0.50 + 0.05 + 0.30) / 4 = 0.3875; class 1: (0.80 + 0.25) / 2 = 0.525.
    probs = torch.tensor([[0.70, 0.20, 0.10],    # 0: right, p_label 0.70
                          [0.50, 0.40, 0.10],    # 0: right, p_label 0.50
                          [0.10, 0.80, 0.10],    # 1: right, p_label 0.80
                          [0.05, 0.90, 0.05],    # labelled 0, predicted 1 at 0.90 >= 0.525: flagged
                          [0.30, 0.50, 0.20],    # labelled 0, predicted 1 at 0.50 <  0.525: hard, kept
                          [0.65, 0.25, 0.10]])   # labelled 1, predicted 0 at 0.65 >= 0.3875: flagged
    labels = torch.tensor([0, 0, 1, 0, 0, 1])
    store = store_after_one_visit(probs.log(), labels)
    assert likely_mislabelled(store).tolist() == [False, False, False, True, False, True]
    s = learnability(store)
    assert s[3] == 0 and s[5] == 0
    assert torch.allclose(s[[0, 1, 2, 4]], 1 - probs[[0, 1, 2, 4], labels[[0, 1, 2, 4]]], atol=1e-5)
    assert s[4] > s[0]                              # the learnable hard sample outranks the easy one


def test_learnability_leaves_never_trained_samples_at_the_top_like_loss_entropy():
    store = HardnessStore(torch.arange(4), 3)
    assert learnability(store).tolist() == [1.0] * 4 == loss_entropy(store).tolist()


def test_loading_a_store_saved_without_the_new_fields_keeps_them_unseen():
    store = store_after_one_visit(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    old = {k: v for k, v in store.state_dict().items() if k not in ("label", "last_pred", "last_conf")}
    fresh = HardnessStore(torch.arange(5), 3)
    fresh.load_state_dict(old)
    assert fresh.visits.tolist() == [1] * 5 and fresh.label.tolist() == [-1] * 5
    assert not likely_mislabelled(fresh).any()      # no label known: nothing is called mislabelled
    assert math.isclose(float(fresh.last_loss.sum()), float(store.last_loss.sum()), rel_tol=1e-6)


def test_unseen_neutral_gives_never_trained_samples_no_priority():
    def fresh_share(unseen_rule):
        ctx = fake_ctx(n=2000, batch_size=64, epochs=12)
        gate = make_gate("sundew", ctx, target_activation=0.3, unseen=unseen_rule)
        first = train_epoch(gate, ctx, 0)
        seen = torch.zeros(2000, dtype=torch.bool)
        seen[first.positions] = True
        second = gate.select(1, plan_of(ctx)).positions
        return (~seen[second]).float().mean().item(), len(second)

    first_share, n_first = fresh_share("first")
    neutral_share, n_neutral = fresh_share("neutral")
    assert first_share > 0.9                        # the old rule: unseen samples go first
    assert neutral_share < 0.8                      # neutral: seen hard samples compete with them
    assert abs(n_first - 600) <= 60 and abs(n_neutral - 600) <= 60
