"""`edge-sel bench memory`: every method at every budget, within it or marked as not fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli

METHODS = ("full FT planned", "classifier", "last-k", "bias-norm", "layers", "rgn", "planner")


def test_bench_memory_quick_run(tmp_path):
    out = tmp_path / "bench"
    run_cli("bench", "memory", "--dataset", "synthetic", "--quick", "--quiet", "--subset", "64", "--test-subset", "32",
            "--batch-size", "32", "--pretrain-epochs", "1", "--budgets", "1/2,1/30", "--out", out)
    bench = json.loads((out / "bench.json").read_text())
    rows = {r["key"]: r for r in bench["rows"]}
    assert set(rows) == {"full FT"} | {f"{m}@{f}" for m in METHODS for f in ("1/2", "1/30")}
    assert rows["full FT"]["counted_peak_mb"] == bench["full_ft_counted_mb"]
    for f in ("1/2", "1/30"):
        assert bench["budgets_mb"][f] == pytest.approx(eval(f) * bench["full_ft_counted_mb"], abs=1e-3)
    ran = [r for r in rows.values() if r["fraction"] and r["fits"]]
    assert ran and all(0 < r["counted_peak_mb"] <= r["budget_mb"] for r in ran)
    assert all(len(bench["results"][r["key"]]) == 1 for r in ran)
    # The reference trains and evaluates as the budgeted runs do: differences are memory's, not precision's.
    numerics = {(c["precision"], c["eval_precision"], c["memory_format"], c["eval_batch_size"]) for c in (
        json.loads((Path(r["run_dir"]) / "config.json").read_text()) for rs in bench["results"].values() for r in rs)}
    assert numerics == {("fp32", "fp32", "contiguous", 32)}
    assert rows["last-k@1/2"]["fits"] and rows["last-k@1/2"]["last_k"] >= 1
    # At 1/30 of full fine-tuning's peak nothing fits (the weights alone are more): not run, and the
    # smallest budget each needs is above the one given.
    refused = [r for r in rows.values() if not r["fits"]]
    assert refused and all(r["needs_mb"] > r["budget_mb"] and "test_acc" not in r for r in refused)
    assert not any(k.endswith("@1/30") for k in bench["results"])
    table = (out / "table.md").read_text()
    assert table.count("| does not fit") == len(refused)
    assert (out / "accuracy-memory.png").stat().st_size > 1000


def test_bench_memory_refuses_a_budget_that_is_not_a_fraction(tmp_path):
    result = run_cli("bench", "memory", "--dataset", "synthetic", "--quick", "--budgets", "1/0",
                     "--out", tmp_path / "b", expect=2)
    assert "--budgets" in result.output and "Traceback" not in result.output and not (tmp_path / "b").exists()
