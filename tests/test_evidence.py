"""Evidence a choice can trust: the trained model is kept unless validation resolvably says it is
worse (a paired test on the same images), the guard still refuses what forgets, a --keep last run
validates only what it reports, and the guard anchors are sized with the validation."""

import json

import pytest
import torch

from helpers import SAME_CHOICES, records, run_cli, summary
from edge_sel.config import TrainConfig
from edge_sel.core.flops import FlopCounter
from edge_sel.engine.evaluation.keep import BN_ADAPT_EPOCH, WARMUP_EPOCH, ModelChoice
from edge_sel.engine.loop.val_size import MIN_SAMPLES, device_val_size, validation_passes
from edge_sel.models import build_model

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


def test_guard_anchors_are_sized_with_validation_never_under_their_floor():
    """500 guard anchors at every pass were a third of a 1,000-image Lite0 run's joules: now they share
    the validation's affordable images, the same share of each set, each above its floor."""
    from edge_sel.core.evidence import packed as pack_right
    from edge_sel.engine.levers.guard_set import draw_guard, guard_floor, unpack_right
    cfg = TrainConfig(epochs=2, batch_size=64, val_share=0.2)
    flops = FlopCounter(build_model("edgecnn", 10, 3), [3, 32, 32])
    sized = device_val_size(cfg, "finetune", 10000, 5000, flops, guard_anchors=500)
    per_pass = sized["affordable"]
    assert MIN_SAMPLES < sized["val_subset"] < 5000 and guard_floor(3.0, 500) < sized["guard_anchors_per_pass"] < 500
    assert sized["val_subset"] + sized["guard_anchors_per_pass"] <= per_pass
    assert sized["val_subset"] / 5000 == pytest.approx(sized["guard_anchors_per_pass"] / 500, abs=0.01)
    assert sized["expected_validation_flops"] <= 0.25 * sized["expected_training_flops"]
    small = device_val_size(cfg, "finetune", 500, 5000, flops, guard_anchors=500)
    assert (small["val_subset"], small["guard_anchors_per_pass"]) == (MIN_SAMPLES, guard_floor(3.0, 500)) == (300, 301)
    assert guard_floor(1.0, 500) == 500 and guard_floor(5.0, 500) == 109 and guard_floor(0.0, 500) == 500
    # A class-balanced, fixed draw, and the source's accuracy on it from the card's per-anchor bits.
    labels = torch.arange(500) % 10
    drawn = draw_guard(labels, 301)
    assert torch.equal(drawn, draw_guard(labels, 301)) and torch.bincount(labels[drawn]).tolist() == [31] + [30] * 9
    source = torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.8
    bits = pack_right(source)
    assert len(bits) == 126 and torch.equal(unpack_right(bits, 500, source.float().mean().item()), source)
    assert unpack_right(bits, 500, 0.5) is None                   # disagrees with the card's own figure


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


def test_a_run_evaluates_a_draw_of_the_guard_anchors_against_the_source_on_the_same_draw(tmp_path):
    """--max-forgetting 5 needs 109 anchors: a run of 200 digits evaluates a fixed draw of that many
    of the warmup's guard anchors at every validation, and the source's accuracy on the same draw
    comes from the card's per-anchor results (or, from a card without them, one pass of the source
    weights at the start, counted with it); promote judges the deployed model on the same draw."""
    import shutil
    from edge_sel.engine.levers.guard_set import MEASURED, draw_guard, unpack_right
    from edge_sel.engine.night.promote import validate_deployed
    from edge_sel.engine.runs.data_options import DataOptions
    from edge_sel.engine.runs.run import finetune, pretrain
    from helpers import PINNED_CHOICES
    warm = tmp_path / "warm"
    pretrain("edgecnn", DataOptions("digits", shard="0/2"), TrainConfig(
        epochs=1, batch_size=64, anchors_per_class=60, fisher_samples=16, seed=0, **PINNED_CHOICES), warm, quiet=True)
    anchors = json.loads((warm / "model.json").read_text())["source_memory"]["anchors"]
    held = anchors["guard"]
    bits = unpack_right(anchors["guard_right"], held, anchors["guard_acc"])
    assert held > 250 and bits is not None

    def run(start, name):
        out = tmp_path / name
        finetune(start, DataOptions("digits", shard="1/2", subset=200), TrainConfig(
            epochs=1, batch_size=32, max_forgetting=5.0, **PINNED_CHOICES), out, quiet=True)
        return out, records(out, baseline=True), summary(out)
    out, (base, last), s = run(warm, "run")
    assert s["config"]["guard_subset"] == 109 and s["guard_anchors"]["held"] == held
    assert [r["anchor_samples_evaluated"] for r in (base, last)] == [109, 109]
    assert last["anchor_samples_held"] == held and s["validation_size"]["guard_floor"] == 109
    labels = load_memory_labels(warm)
    source_on_draw = bits[draw_guard(labels, 109)].float().mean().item()
    assert s["guard_anchors"]["source_acc"] == pytest.approx(source_on_draw)
    assert base["anchor_forgetting"] == pytest.approx(100 * (source_on_draw - base["anchor_acc"]), abs=1e-3)
    _, anchor_acc, cost = validate_deployed(json.loads((out / "config.json").read_text()), warm, out)
    assert cost["anchor_samples"] == 109 and anchor_acc == pytest.approx(base["anchor_acc"])
    # A card from before the per-anchor results: the source is measured on the draw, once, at the start.
    old = tmp_path / "old-warm"
    shutil.copytree(warm, old)
    card = json.loads((old / "model.json").read_text())
    del card["source_memory"]["anchors"]["guard_right"]
    (old / "model.json").write_text(json.dumps(card))
    _, (base, last), s = run(old, "old-run")
    assert s["guard_anchors"]["source_from"] == MEASURED and s["guard_anchors"]["source_acc"] == pytest.approx(source_on_draw)
    assert base["anchor_samples_evaluated"] == 2 * 109 and last["anchor_samples_evaluated"] == 109


def load_memory_labels(checkpoint):
    """The guard anchors' labels, in the order the run draws from."""
    from safetensors.torch import load_file
    from edge_sel.core.source_memory import GUARD
    anchors = load_file(str(checkpoint / "anchors.safetensors"))
    return anchors["labels"][anchors["role"].long() == GUARD].long()
