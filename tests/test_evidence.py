"""Evidence a choice can trust: the trained model is kept unless validation resolvably says it is
worse (a paired test on the same images), the guard still refuses what forgets, and a --keep last
run validates only what it reports."""

import json

import pytest
import torch

from helpers import SAME_CHOICES, records, run_cli, summary
from edge_sel.config import TrainConfig
from edge_sel.engine.evaluation.keep import BN_ADAPT_EPOCH, WARMUP_EPOCH, ModelChoice
from edge_sel.engine.loop.val_size import validation_passes

pytestmark = pytest.mark.usefixtures("one_thread")


def right(n: int, first_right: int, shift: int = 0) -> torch.Tensor:
    """n images; `first_right` of them right, starting at image `shift` (so two vectors overlap as
    the test needs: the same right images give no discordant ones)."""
    out = torch.zeros(n, dtype=torch.bool)
    out[shift:shift + first_right] = True
    return out


class Model(torch.nn.Module):
    """Weights a test can set, to see which were handed back."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def at(self, value: float) -> "Model":
        with torch.no_grad():
            self.w.fill_(value)
        return self


def chosen(steps, **guard) -> tuple[ModelChoice, dict, Model]:
    """A keep-best choice over (epoch, right/wrong, guard-anchor accuracy) steps; each candidate's
    weights are its epoch number (the start: -1)."""
    model, choice = Model(), ModelChoice("best", **guard)
    for epoch, r, anchors in steps:
        value = -2.0 if epoch == BN_ADAPT_EPOCH else float(epoch)
        choice.consider(epoch, r.float().mean().item(), None, model.at(value), anchors, r)
    return choice, choice.describe(), model


def kept_weights(choice: ModelChoice, model: Model) -> float:
    kept = choice.weights_to_load()
    return model.w.item() if kept is None else kept["w"].item()


def test_the_exact_paired_test_calls_one_image_apart_noise():
    from edge_sel.engine.evaluation.paired import compare, exact_mcnemar
    assert exact_mcnemar(1, 0) == 1.0 and exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(6, 0) == pytest.approx(2 / 64)             # the fewest one-way flips it resolves
    assert exact_mcnemar(5, 0) == pytest.approx(2 / 32) and exact_mcnemar(10, 2) == pytest.approx(0.0386, abs=1e-4)
    assert exact_mcnemar(2600, 2400) < 0.05 < exact_mcnemar(2550, 2450)     # exact at 5,000 discordant images
    paired = compare(right(40, 31), right(40, 30))
    assert (paired.first_only, paired.second_only, paired.resolved) == (1, 0, False)


@pytest.mark.parametrize("last_right", [32, 31, 29])
def test_a_tie_or_a_difference_within_noise_keeps_the_trained_model(last_right):
    """The README's case in miniature: on 40 validation images epoch 0 scores 32, the last epoch as
    many (a tie), or one or three fewer; the old rule handed back epoch 0 (the first of equals)."""
    choice, kept, model = chosen([(WARMUP_EPOCH, right(40, 31), None), (0, right(40, 32), None),
                                  (1, right(40, last_right), None)])
    assert (kept["kept"], kept["kept_epoch"], kept["rule"]) == ("last", 1, "unresolved")
    assert kept_weights(choice, model) == 1.0 and choice.weights_to_load() is None
    assert kept["paired"]["against"] == 0 and kept["paired"]["kept_only"] == 0 and kept["paired"]["p"] > 0.05
    assert kept["reason"].startswith(f"validation could not tell the last epoch ({100 * last_right / 40:.2f}%) "
                                     f"from epoch 0 (80.00%): on 40 validation images")
    assert kept["reason"].endswith("the output model is the trained model, the last epoch")


def test_a_resolvable_loss_keeps_the_better_earlier_one():
    """200 images: epoch 0 right on 160, the last on 120 of the same (40 one-way flips): epoch 0 is
    handed back, with the test's numbers; the start, resolvably worse than epoch 0, is not."""
    choice, kept, model = chosen([(WARMUP_EPOCH, right(200, 130), None), (0, right(200, 160), None),
                                  (1, right(200, 120), None)])
    assert (kept["kept"], kept["kept_epoch"], kept["rule"]) == ("best", 0, "best")
    assert kept_weights(choice, model) == 0.0
    assert kept["overruled"][0] == {"epoch": 1, "val_acc": pytest.approx(0.6), "by": 0, "by_val_acc": pytest.approx(0.8),
                                    "by_only": 40, "only": 0, "p": pytest.approx(2 / 2 ** 40), "images": 200}
    assert "the last epoch's validation accuracy (60.00%) is resolvably below epoch 0's (80.00%)" in kept["reason"]
    # Every epoch resolvably worse than the start: the start, bit for bit, and fine-tuning did not help.
    choice, kept, model = chosen([(WARMUP_EPOCH, right(200, 160), None), (0, right(200, 161), None),
                                  (1, right(200, 120), None)])
    assert (kept["kept"], kept["kept_epoch"]) == ("best", 0)      # epoch 0 ties the start: the later is kept
    choice, kept, model = chosen([(WARMUP_EPOCH, right(200, 160), None), (0, right(200, 110), None),
                                  (1, right(200, 120), None)])
    assert (kept["kept"], kept["rule"], kept["fine_tuning_helped"]) == ("warmup", "warmup", False)
    assert kept_weights(choice, model) == -1.0 and kept["reason"].startswith("fine-tuning did not help on this data")


def test_the_guard_still_refuses_a_forgetting_last_epoch_and_a_resumed_choice_is_the_same():
    """The last epoch resolvably best on validation but 20 points below the source on the guard
    anchors: refused; the output is the epoch before it, and the rule says the guard decided. Cut
    after two candidates, a resumed choice (its per-image results in the saved state) is the same."""
    steps = [(WARMUP_EPOCH, right(200, 100), 0.90), (BN_ADAPT_EPOCH, right(200, 101), 0.89),
             (0, right(200, 120), 0.88), (1, right(200, 180), 0.70)]
    guard = dict(max_forgetting=3.0, has_anchors=True, source_anchor_acc=0.90)
    choice, kept, model = chosen(steps, **guard)
    assert (kept["kept"], kept["kept_epoch"], kept["rule"]) == ("best", 0, "forgets")
    assert [r["epoch"] for r in kept["refused"]] == [1] and kept_weights(choice, model) == 0.0
    assert kept["reason"].startswith("epoch 1 would have been kept on validation (90.00%) but forgot: guard-anchor "
                                     "accuracy 70.00%, 20.00 points below the source model's 90.00%")
    first, _, _ = chosen(steps[:2], **guard)
    state = first.state_dict()
    assert state["candidates"][1]["right"].dtype == torch.bool          # one byte an image, no more
    resumed = ModelChoice("best", **guard)
    resumed.load_state_dict(state)
    for epoch, r, anchors in steps[2:]:
        resumed.consider(epoch, r.float().mean().item(), None, model.at(float(epoch)), anchors, r)
    assert resumed.describe() == kept


def test_a_keep_last_run_validates_only_what_it_reports(tiny_warm, tmp_path):
    """It validated the whole split and every guard anchor after every epoch for a choice it does not
    make; now the last epoch alone (what the summary, card and promote report), on images sized to
    the run, and the epochs before say they were not evaluated."""
    cfg = TrainConfig(epochs=3, keep="last", explicit=["keep"], evaluate_start=True)
    assert validation_passes(cfg, "finetune") == 2 and validation_passes(cfg, "pretrain") == 3
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", out, "--epochs", "3", "--keep", "last",
            "--dataset", "synthetic", "--batch-size", "16", "--lr", "0.02", "--quiet", *SAME_CHOICES)
    base, *epochs = records(out, baseline=True)
    assert [r["evaluated"] for r in epochs] == ["none", "none", "val+test"]
    assert [r["val_samples_evaluated"] for r in epochs] == [0, 0, 64] and epochs[-1]["val_acc"] is not None
    assert [r.get("anchor_samples_evaluated") for r in epochs] == [0, 0, base["anchor_samples_evaluated"]]
    s = summary(out)
    assert s["kept"]["kept"] == "last" and s["output_model"]["val_acc"] == epochs[-1]["val_acc"]
    assert s["validation_size"]["validation_passes"] == 2
    assert json.loads((out / "model.json").read_text())["training"]["final_val_acc"] == epochs[-1]["val_acc"]
