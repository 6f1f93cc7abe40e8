"""`edge-sel finetune` with every gating strategy on synthetic data: records account for exactly
the samples computed, presets count the seed's full passes, and bad values exit 2 in one line."""

import math
import sys
import time

import pytest

from edge_sel.cli import main
from edge_sel.methods import STRATEGIES, Strategy

from helpers import records, run_cli

EPOCHS = 3
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def warmup(tmp_path_factory):
    out = tmp_path_factory.mktemp("gating-warm") / "ckpt"
    run_cli("pretrain", "--dataset", "synthetic", "--model", "edgecnn", "--epochs", 1, "--batch-size", 32,
            "--shard", "0/2", "--out", out, "--quiet")
    return out


def finetune(ckpt, out, *extra, epochs=EPOCHS):
    run_cli("finetune", "--checkpoint", ckpt, "--dataset", "synthetic", "--shard", "1/2", "--epochs", epochs,
            "--batch-size", 48, "--out", out, "--quiet", *extra)
    return records(out)


@pytest.fixture(scope="module")
def dense(warmup, tmp_path_factory):
    return finetune(warmup, tmp_path_factory.mktemp("dense") / "run")


def check_accounting(recs, dense_recs):
    flops_per_sample = dense_recs[0]["flops_forward"] / dense_recs[0]["backward_samples"]
    for r in recs:
        assert math.isfinite(r["activation"]) and 0 < r["activation"] <= 1
        assert r["backward_samples"] == round(r["activation"] * r["samples_available"])
        assert r["forward_samples"] == r["backward_samples"] + r["scoring_samples"]
        # Counted, not modelled: the epoch's forward FLOPs are those of the samples actually run.
        assert r["flops_forward"] == pytest.approx(r["backward_samples"] * flops_per_sample, rel=1e-9)


@pytest.mark.parametrize("strategy,extra", [
    ("sundew", ()),
    ("sundew", ("--significance", "dih", "--unbiased", "--gate-window", 2)),
    ("random", ()),
    ("infobatch", ()),
    ("dihcl", ("--dih-select", "exp", "--dih-signal", "dloss", "--dih-warm", 1)),
])
def test_gating_strategies_record_what_they_compute(warmup, dense, tmp_path, strategy, extra):
    # infobatch and dihcl choose their own share; a --target-activation would be refused as ignored.
    target = ("--target-activation", 0.3) if strategy in ("sundew", "random") else ()
    recs = finetune(warmup, tmp_path / "run", "--strategy", strategy, *target, *extra)
    assert [r["epoch"] for r in recs] == list(range(EPOCHS))
    check_accounting(recs, dense)
    assert all(r["scoring_samples"] == 0 for r in recs)     # decided on stale, free signals
    n = recs[0]["samples_available"]
    if strategy in ("sundew", "random"):
        assert all(abs(r["backward_samples"] / n - 0.3) <= 0.06 for r in recs)
        assert all(r["target_activation"] == 0.3 for r in recs)
    if strategy == "sundew":
        assert all(0 <= r["threshold_start"] <= 1.5 and 0 <= r["threshold_mean"] <= 1.5 for r in recs)
        assert all(0 < r["activation_ema"] < 1 for r in recs)
    if strategy == "infobatch":
        assert recs[0]["activation"] == 1.0 and recs[1]["activation"] < 1.0 and recs[-1]["activation"] == 1.0
    if strategy == "dihcl":
        assert recs[0]["activation"] == 1.0 and recs[1]["activation"] < 1.0


def test_ast_prod_preset_counts_a_full_forward_and_backward_of_every_sample(warmup, dense, tmp_path):
    recs = finetune(warmup, tmp_path / "run", "--preset", "ast-prod", epochs=2)
    for r in recs:
        assert r["strategy"] == "ast-prod"
        assert r["forward_samples"] == r["backward_samples"] == r["samples_available"]
        assert r["activation"] == 1.0 and r["flops_forward"] == dense[0]["flops_forward"]
        assert 0 < r["gate_activation"] < 1                     # the seed's "activation": rows whose loss counts
        assert r["threshold_start"] <= 3.0 and r["target_activation"] == 0.4


def test_ast_two_preset_counts_its_selection_forward(warmup, dense, tmp_path):
    recs = finetune(warmup, tmp_path / "run", "--preset", "ast-two", epochs=2)
    check_accounting(recs, dense)
    for r in recs:
        assert r["scoring_samples"] == r["samples_available"]     # a no-grad forward of every sample
        assert r["backward_samples"] < r["samples_available"]
        assert r["backward_samples"] == pytest.approx(r["gate_activation"] * r["samples_available"], abs=1)


@pytest.mark.skipif("sel" not in STRATEGIES, reason="sel strategy not available")
def test_sundew_gate_inside_sel_stages(warmup, dense, tmp_path):
    recs = finetune(warmup, tmp_path / "run", "--strategy", "sel", "--gate", "sundew", "--target-activation", 0.5)
    assert recs[0]["strategy"] == "sel+sundew" and recs[0]["stage"] is not None
    for r in recs:
        assert r["backward_samples"] < r["samples_available"] and "threshold_mean" in r


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["edge-sel", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("bad,option", [
    (("--strategy", "sundew", "--target-activation", 0), "--target-activation"),
    (("--strategy", "random", "--target-activation", 1.5), "--target-activation"),
    (("--strategy", "dihcl", "--dih-select", "best"), "--dih-select"),
    (("--strategy", "dihcl", "--dih-gamma", 0), "--dih-gamma"),
    (("--strategy", "dihcl", "--dih-warm", -1), "--dih-warm"),
    (("--strategy", "sundew", "--gate-window", 0), "--gate-window"),
    (("--strategy", "sundew", "--gate-temperature", -1), "--gate-temperature"),
    (("--strategy", "infobatch", "--prune-ratio", 1), "--prune-ratio"),
    (("--strategy", "infobatch", "--anneal", 1.0), "--anneal"),
    (("--strategy", "sundew", "--energy-budget-per-epoch", -5), "--energy-budget-per-epoch"),
    (("--strategy", "sundew", "--significance", "magic"), "--significance"),
    (("--gate", "nosuch"), "--gate"),
    (("--strategy", "dihcl", "--preset", "ast-prod"), "--preset"),
])
def test_bad_gating_values_exit_2_with_one_line(warmup, tmp_path, monkeypatch, capsys, bad, option):
    code, err = run_main(monkeypatch, capsys, "finetune", "--checkpoint", warmup, "--dataset", "synthetic",
                         "--shard", "1/2", "--epochs", 1, "--out", tmp_path / "run", "--quiet", *bad)
    assert code == 2
    assert len(err.splitlines()) == 1 and option in err, err
    assert not (tmp_path / "run").exists()


class SlowPlanner(Strategy):
    """Dense, but deciding takes a while: that time belongs to the epoch."""
    def plan(self, epoch):
        time.sleep(0.3)
        return super().plan(epoch)


def test_planning_time_is_part_of_the_epochs_wall_time(warmup, tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES, "slow", lambda cfg: SlowPlanner())
    recs = finetune(warmup, tmp_path / "run", "--strategy", "slow", epochs=1)
    assert recs[0]["wall_s"] >= 0.3
