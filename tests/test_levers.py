"""Levers against forgetting (--ewc, --replay, --bn-anchor-share, --reset-forgetting): each changes
only what it says, and is counted in samples and FLOPs; without them a run is what it was."""

import json
import shutil

import pytest
import torch

from helpers import digits_warmup_with_memory, records, run_cli, run_main, stable, summary, without_memory
from edge_sel.core.checkpoint import save_checkpoint
from edge_sel.core.flops import FlopCounter
from edge_sel.core.source_memory import GUARD
from edge_sel.engine import faults
from edge_sel.engine.evaluation.bn_adapt import batchnorm_layers
from edge_sel.methods.base import Strategy
from edge_sel.methods.objective import PENALTY_BACKWARD_FLOPS_PER_ENTRY, PENALTY_FORWARD_FLOPS_PER_ENTRY
from edge_sel.models import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# The device's data: the other half of digits, low contrast (the source model forgets clean digits
# when it adapts to it). Layout, evaluation batch and precision fixed: runs compared bit for bit.
LOCAL = ["--dataset", "digits", "--shard", "1/2", "--shift", "corrupt=contrast:4", "--batch-size", "64",
         "--seed", "3", "--quiet", "--memory-format", "contiguous", "--eval-batch-size", "256",
         "--precision", "fp32"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    return digits_warmup_with_memory(tmp_path_factory.mktemp("levers") / "warm")


@pytest.fixture(scope="module")
def plain(warm, tmp_path_factory):
    """One epoch without any lever: the reference the levers are compared with."""
    out = tmp_path_factory.mktemp("levers") / "plain"
    run_cli("finetune", "--checkpoint", warm, "--epochs", "1", "--out", out, "--keep", "last", *LOCAL)
    return out


def fisher_distance(model, warm) -> float:
    fisher = load_checkpoint_memory(warm, "fisher")
    source = load_checkpoint_memory(warm, "source")
    return sum(float((fisher[n] * (p.detach() - source[n]).square()).sum()) for n, p in model.named_parameters())


def load_checkpoint_memory(warm, name):
    from safetensors.torch import load_file
    return load_file(str(warm / f"{name}.safetensors"))


def test_ewc_costs_no_forward_pass_and_pulls_toward_the_source(warm, plain, tmp_path):
    out = tmp_path / "ewc"
    run_cli("finetune", "--checkpoint", warm, "--epochs", "1", "--out", out, "--keep", "last", "--ewc", "1", *LOCAL)
    base, got = records(plain), records(out)
    model, card = load_checkpoint(warm)
    entries = sum(p.numel() for p in model.parameters())
    for b, r in zip(base, got):
        assert "flops_penalty" not in b
        assert (r["forward_samples"], r["backward_samples"], r["flops_forward"], r["flops_backward"]) == \
            (b["forward_samples"], b["backward_samples"], b["flops_forward"], b["flops_backward"])
        assert r["flops_penalty"] == r["optimizer_steps"] * entries * \
            (PENALTY_FORWARD_FLOPS_PER_ENTRY + PENALTY_BACKWARD_FLOPS_PER_ENTRY)
        assert r["flops_train"] == r["flops_forward"] + r["flops_backward"] + r["flops_penalty"]
    totals = summary(out)["totals"]
    assert totals["flops_penalty"] == sum(r["flops_penalty"] for r in got)
    assert fisher_distance(load_checkpoint(out)[0], warm) < 0.5 * fisher_distance(load_checkpoint(plain)[0], warm)


def test_ewc_penalises_only_what_trains(warm, tmp_path):
    out = tmp_path / "bn-affine"
    run_cli("finetune", "--checkpoint", warm, "--epochs", "1", "--out", out, "--ewc", "1", "--sparsity", "bn-affine",
            *LOCAL)
    (r,) = records(out)
    model, _ = load_checkpoint(warm)
    trained = sum(p.numel() for m in batchnorm_layers(model) for p in m.parameters()) + \
        sum(p.numel() for p in model.fc.parameters())
    assert r["flops_penalty"] == r["optimizer_steps"] * trained * 8


def test_replay_rows_are_counted_and_never_guard_anchors(warm, plain, tmp_path, monkeypatch):
    from edge_sel.backends.torch_backend import TorchBackend
    trained_ids, observed = [], []
    step = TorchBackend.train_step
    monkeypatch.setattr(TorchBackend, "train_step",
                        lambda self, i, batch: (trained_ids.append(batch.index.clone()), step(self, i, batch))[1])
    monkeypatch.setattr(Strategy, "observe", lambda self, batch, losses, logits:
                        observed.append((len(batch), len(losses), len(logits))))
    out = tmp_path / "replay"
    run_cli("finetune", "--checkpoint", warm, "--epochs", "1", "--out", out, "--keep", "last", "--replay", "0.25",
            *LOCAL)
    base, got = records(plain), records(out)
    model, card = load_checkpoint(warm)
    f2, b2 = FlopCounter(model, card.input_shape).train_step(2)       # BatchNorm trains on two at least
    for b, r in zip(base, got):
        assert r["replay_samples"] == r["optimizer_steps"] * 16         # round(0.25 x 64) a step
        assert r["backward_samples"] == b["backward_samples"] + r["replay_samples"]
        assert r["forward_samples"] == b["forward_samples"] + r["replay_samples"]
        assert 2 * (r["flops_forward"] - b["flops_forward"]) == r["replay_samples"] * f2
        assert 2 * (r["flops_backward"] - b["flops_backward"]) == r["replay_samples"] * b2
        assert r["activation"] == b["activation"]           # of the local data
    local = sum(r["backward_samples"] - r["replay_samples"] for r in got)
    assert all(n == n_losses == n_logits for n, n_losses, n_logits in observed)
    assert sum(n for n, _, _ in observed) == local
    anchors = load_checkpoint_memory(warm, "anchors")
    guard_ids = set(anchors["index"][anchors["role"] == GUARD].tolist())
    replay_ids = set(anchors["index"][anchors["role"] != GUARD].tolist())
    replayed = torch.cat([ids[-16:] for ids in trained_ids]).tolist()
    assert set(replayed) <= replay_ids and not set(replayed) & guard_ids
    assert summary(out)["totals"]["samples_trained"] == local + summary(out)["totals"]["replay_samples"]


def test_levers_survive_a_power_cut(warm, tmp_path, monkeypatch):
    """Replay, the penalty and anchor BatchNorm statistics, crashed mid-epoch (nothing after the
    crash point runs) and resumed: the records equal the unbroken run's."""
    levers = ["--epochs", "1", "--checkpoint-every", "3", "--replay", "0.25", "--ewc", "0.5", "--bn-adapt", "100",
              "--bn-anchor-share", "0.3"]
    run_cli("finetune", "--checkpoint", warm, "--out", tmp_path / "whole", *levers, *LOCAL)
    monkeypatch.setattr(faults, "crash_by_raising", True)
    monkeypatch.setenv(faults.KILL_ENV, "step-5")       # two steps after the checkpoint at step 3
    with pytest.raises(faults.InjectedCrash):
        run_cli("finetune", "--checkpoint", warm, "--out", tmp_path / "cut", *levers, *LOCAL)
    monkeypatch.delenv(faults.KILL_ENV)
    run_cli("finetune", "--resume", tmp_path / "cut", "--quiet")
    assert stable(records(tmp_path / "cut", baseline=True)) == stable(records(tmp_path / "whole", baseline=True))


def test_bn_anchor_share_mixes_anchors_into_the_statistics(warm, tmp_path):
    runs = {}
    for name, extra in (("local", []), ("mixed", ["--bn-anchor-share", "0.3"])):
        runs[name] = tmp_path / name
        run_cli("finetune", "--checkpoint", warm, "--epochs", "0", "--bn-adapt", "200", "--keep", "last",
                "--out", runs[name], *extra, *LOCAL)
    (local,), (mixed,) = records(runs["local"]), records(runs["mixed"])
    assert "bn_adapt_anchor_samples" not in local
    assert mixed["bn_adapt_anchor_samples"] == 60 and mixed["bn_adapt_samples"] == 200
    model, card = load_checkpoint(warm)
    per_image = FlopCounter(model, card.input_shape).eval_batch(1)
    assert mixed["flops_bn_adapt"] == local["flops_bn_adapt"] == 200 * per_image
    a, b = batchnorm_layers(load_checkpoint(runs["local"])[0]), batchnorm_layers(load_checkpoint(runs["mixed"])[0])
    assert all(not torch.equal(x.running_mean, y.running_mean) for x, y in zip(a, b))
    # The anchors are clean source images, the local ones low contrast: the first layer's variance
    # grows about 3.8x (it stayed within 2% with 60 more local images mixed in instead of anchors).
    assert (b[0].running_var > 2 * a[0].running_var).all()


def damaged_copy(warm, out):
    """The source model with its classifier scrambled, shipped with the source's memory."""
    model, card = load_checkpoint(warm)
    with torch.no_grad():
        model.fc.weight.copy_(model.fc.weight[torch.randperm(model.fc.weight.shape[0], generator=torch.Generator().manual_seed(1))])
    out.mkdir()
    for name in ("anchors", "fisher", "source"):
        shutil.copy(warm / f"{name}.safetensors", out)
    save_checkpoint(out, model, card)
    return out


def test_reset_restores_a_damaged_start_and_leaves_a_healthy_one(warm, tmp_path):
    damaged = damaged_copy(warm, tmp_path / "damaged")
    source = load_checkpoint_memory(warm, "source")
    for start, expect in ((damaged, True), (warm, False)):
        out = tmp_path / f"reset-{expect}"
        run_cli("finetune", "--checkpoint", start, "--epochs", "0", "--reset-forgetting", "5", "--out", out, *LOCAL)
        (base,) = records(out, baseline=True)
        reset = summary(out)["reset"]
        assert base["reset"] == reset and reset["reset"] is expect
        assert reset["source_guard_acc"] - reset["start_guard_acc"] > 0.05 if expect else \
            reset["start_guard_acc"] == reset["source_guard_acc"]
        model, card = load_checkpoint(out)
        per_image = FlopCounter(model, card.input_shape).eval_batch(1)
        # The baseline's own evaluation measured the start's guard accuracy; a reset evaluates again.
        assert base["anchor_samples_evaluated"] == (200 if expect else 100)
        assert base["flops_anchor"] == base["anchor_samples_evaluated"] * per_image
        assert base["anchor_acc"] == reset["source_guard_acc" if expect else "start_guard_acc"]
        weights = model.state_dict()
        want = source if expect else load_checkpoint(start)[0].state_dict()
        assert all(torch.equal(weights[k], want[k]) for k in want)
        # The run still started from what was deployed: promote compares against it.
        assert json.loads((out / "config.json").read_text())["checkpoint"] == str(start)


@pytest.mark.parametrize("extra, says", [
    (["--ewc", "1"], "--ewc: the checkpoint"),
    (["--replay", "0.2"], "--replay: the checkpoint"),
    (["--reset-forgetting", "3"], "--reset-forgetting: the checkpoint"),
    (["--bn-anchor-share", "0.2"], "--bn-anchor-share: needs --bn-adapt"),
    (["--ewc", "1", "--backend", "ort"], "--ewc: needs --backend torch"),
    (["--reset-forgetting", "3", "--sparsity", "lottery"],
     "--reset-forgetting: not with --sparsity lottery"),
])
def test_refusals_are_one_line(warm, tmp_path, capsys, extra, says):
    bare = without_memory(warm, tmp_path / "bare")
    code, err = run_main(["finetune", "--checkpoint", bare, "--epochs", "1", "--out", tmp_path / "run", *extra,
                          *LOCAL], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_the_default_objective_is_the_plain_cross_entropy_step(warm):
    """No lever: the step is the one the backend took before the objective existed, bit for bit."""
    from edge_sel.backends.torch_backend import TorchBackend, make_optimizer
    from edge_sel.data import Batch
    from edge_sel.methods.base import Updater
    weights = []
    for objective in ("default", "by hand"):
        torch.manual_seed(0)
        model, _ = load_checkpoint(warm)
        opt = make_optimizer("sgd", model.parameters(), 0.05, 0.9, 5e-4)
        x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
        if objective == "default":
            losses, _ = TorchBackend(model, opt, Updater(), torch.device("cpu"), amp=False,
                                     label_smoothing=0.1).train_step(0, Batch(torch.arange(8), torch.arange(8), x, y))
        else:
            model.train()
            losses = torch.nn.functional.cross_entropy(model(x).float(), y, reduction="none", label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            losses.mean().backward()
            opt.step()
        weights.append((losses.detach(), [p.detach().clone() for p in model.parameters()]))
    assert torch.equal(weights[0][0], weights[1][0])
    assert all(torch.equal(a, b) for a, b in zip(weights[0][1], weights[1][1]))
