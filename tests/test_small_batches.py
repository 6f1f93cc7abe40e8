"""No training step ever runs on one sample (BatchNorm cannot), the counts stay exact, and any mix of
data size, batch size, strategy, gate, updater and activation ends with records or a one-line exit 2."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import records, run_cli, run_main
from edge_sel.data import BatchLoader
from edge_sel.data.dataset import IndexedDataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_warm(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-warm") / "ckpt"
    run_cli("pretrain", "--dataset", "digits", "--epochs", "1", "--out", out, "--quiet")
    return out


def loader(n: int, batch_size: int) -> BatchLoader:
    ds = IndexedDataset(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                        torch.arange(n), ["a"], "t")
    return BatchLoader(ds, [0.0], [1.0], batch_size, augment=False, generator=torch.Generator())


@pytest.mark.parametrize("n,batch_size,sizes", [(129, 128, [129]), (257, 128, [128, 129]), (256, 128, [128, 128]),
                                                (1, 128, [1]), (2, 1, [2]), (3, 1, [1, 2]), (3, 2, [3])])
def test_a_last_batch_of_one_joins_the_one_before(n, batch_size, sizes):
    lo = loader(n, batch_size)
    got = [len(b) for b in lo.batches(torch.arange(n))]
    assert got == sizes and lo.num_batches(n) == len(sizes)
    # A resumed epoch starts at a batch boundary and yields the same batches from there.
    if len(sizes) > 1:
        assert [len(b) for b in lo.batches(torch.arange(n), start=batch_size)] == sizes[1:]


def test_the_reported_sundew_crash_now_trains_every_planned_sample(digits_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", digits_warm, "--dataset", "digits", "--epochs", "6", "--seed", "5",
            "--strategy", "sundew", "--target-activation", "0.3", "--out", out, "--quiet")
    recs = records(out)
    assert len(recs) == 6
    assert all(r["single_samples_untrained"] == 0 for r in recs)


@pytest.mark.parametrize("subset", [12, 11])
def test_plans_of_size_one_mod_the_batch_size_keep_exact_counts(tiny_warm, tmp_path, subset):
    """Dense over 10*k+1 samples with batch 10: the last row joins the batch before it."""
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--subset", str(subset),
            "--batch-size", "10", "--epochs", "2", "--out", out, "--quiet")
    for r in records(out):
        assert r["backward_samples"] == r["samples_available"] and r["single_samples_untrained"] == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dataset=st.sampled_from(["digits", "synthetic"]), size=st.integers(1, 600),
       batch_size=st.sampled_from([1, 2, 3, 7, 16, 64]),
       strategy=st.sampled_from(["dense", "random", "sundew", "infobatch", "dihcl", "sel"]),
       gate=st.sampled_from([None, "sundew", "random", "infobatch"]),
       sparsity=st.sampled_from([None, "none", "mask", "layers"]),
       activation=st.sampled_from([None, 0.05, 0.3, 0.5, 1.0]))
def test_any_run_ends_with_records_or_one_line_exit_2(digits_warm, tiny_warm, tmp_path_factory, capsys, dataset,
                                                      size, batch_size, strategy, gate, sparsity, activation):
    out = tmp_path_factory.mktemp("run") / "r"
    warm = digits_warm if dataset == "digits" else tiny_warm
    argv = ["finetune", "--checkpoint", warm, "--dataset", dataset, "--subset", size, "--batch-size", batch_size,
            "--epochs", "1", "--strategy", strategy, "--out", out, "--quiet", "--checkpoint-every", "0"]
    if gate:
        argv += ["--gate", gate]
    if sparsity:
        argv += ["--sparsity", sparsity]
    if activation is not None and (gate or strategy in ("sundew", "random")):
        argv += ["--target-activation", activation]
    code, err = run_main(argv, capsys)
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edge-sel: error:"), err
    else:
        assert code == 0, err
        recs = records(out)
        assert recs, "a run that exits 0 writes its records"
        for r in recs:
            assert r["backward_samples"] <= r["samples_available"]


@pytest.mark.parametrize("budget", [[], ["--memory-budget", "2.5"]])
def test_batches_of_one_with_batchnorm_statistics_training_are_refused_in_one_line(digits_warm, tmp_path, capsys,
                                                                                    budget):
    """Every batch of one used to overwrite the row waiting from the last: 3 of 644 samples trained and
    nothing said; under a budget the counter's BatchNorm raised a traceback."""
    out = tmp_path / "run"
    code, err = run_main(["finetune", "--checkpoint", digits_warm, "--dataset", "digits", "--subset", "40",
                          "--batch-size", "1", "--epochs", "1", "--out", out, "--quiet", *budget], capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-sel: error: --batch-size 1:") and "--bn-mode eval" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("budget", [[], ["--memory-budget", "5"]])
def test_batches_of_one_train_every_sample_where_batchnorm_statistics_are_frozen(digits_warm, tmp_path, budget,
                                                                                 monkeypatch):
    # The plan of one row at a time, not the process's growth before it (measured: what ran before here).
    monkeypatch.setenv("EDGE_SEL_PROCESS_GROWTH_MB", "0")
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", digits_warm, "--dataset", "digits", "--subset", "40", "--batch-size", "1",
            "--bn-mode", "eval", "--epochs", "1", "--out", out, "--quiet", *budget)
    (r,) = records(out)
    assert r["backward_samples"] == r["samples_available"] == r["forward_samples"]
    assert r["single_samples_untrained"] == 0 and r["optimizer_steps"] >= r["samples_available"] - 1
