"""`edge-sel bench memory`: every method at every budget, within it or marked as not fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sel.bench.memory import MIN_LAST_K_CHUNK, SAME_NUMERICS, MemoryModel, summary_line
from edge_sel.config import TrainConfig
from edge_sel.engine.machine.memory_plan import RESERVE
from edge_sel.methods.update.fixed_sets import bias_norm_names, classifier_names
from edge_sel.models.blocks import named_blocks
from helpers import run_cli

METHODS = ("full FT planned", "classifier", "last-k", "bias-norm", "layers", "rgn", "planner")


@pytest.fixture(scope="module", autouse=True)
def _no_process_growth():
    """The bench's rows are fitted by count; a run's own growth before its first step (measured, a few
    MiB that vary with what the process ran before) is given as none, as in test_memory_plan, so which
    rows fit is the counts' decision."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_SEL_PROCESS_GROWTH_MB", "0")
        yield


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """Every method at 1/2 and 1/30 in one process, on a warmup the bench makes."""
    out = tmp_path_factory.mktemp("quick") / "bench"
    run_cli("bench", "memory", "--dataset", "synthetic", "--quick", "--quiet", "--subset", "64", "--test-subset", "32",
            "--batch-size", "32", "--pretrain-epochs", "1", "--budgets", "1/2,1/30", "--one-process", "--out", out)
    return out


def test_bench_memory_quick_run(quick_bench):
    out = quick_bench
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
    # Evaluation runs a training batch at a time, or fewer where a budget leaves less beside training.
    configs = {key: json.loads((Path(rs[0]["run_dir"]) / "config.json").read_text())
               for key, rs in bench["results"].items()}
    assert {(c["precision"], c["eval_precision"], c["memory_format"]) for c in configs.values()} == \
        {("fp32", "fp32", "contiguous")}
    assert configs["full FT"]["eval_batch_size"] == 32 and all(c["eval_batch_size"] <= 32 for c in configs.values())
    assert rows["last-k@1/2"]["fits"] and rows["last-k@1/2"]["last_k"] >= 1
    # At 1/30 of full fine-tuning's peak nothing fits (the weights alone are more): not run, and the
    # smallest budget each needs is above the one given.
    refused = [r for r in rows.values() if not r["fits"]]
    assert refused and all(r["needs_mb"] > r["budget_mb"] and "test_acc" not in r for r in refused)
    assert not any(k.endswith("@1/30") for k in bench["results"])
    table = (out / "table.md").read_text()
    assert table.count("| does not fit") == len(refused)
    assert (out / "accuracy-memory.png").stat().st_size > 1000
    # In one process a run reuses what earlier runs freed: no measured peak is shown, and the notes say why.
    assert all(r.get("measured_peak_mb") is None for r in ran) and "--one-process" in table
    # Each run planned the shape the bench fitted it to (the same budget less the same reserve).
    mm = MemoryModel(out / "warmup", TrainConfig(epochs=1, batch_size=32, **SAME_NUMERICS))
    budget = bench["budgets_mb"]["1/2"]
    sets = {"full FT planned": mm.everything, "classifier": classifier_names(mm.model),
            "bias-norm": bias_norm_names(mm.model), "last-k": classifier_names(mm.model, rows["last-k@1/2"]["last_k"])}
    for method, trainable in sets.items():
        fitted = mm.shape_for(trainable, budget)
        assert rows[f"{method}@1/2"]["fits"] == (fitted is not None), method
        assert fitted is None or rows[f"{method}@1/2"]["micro_batch"] == fitted[0].chunk, method
    # last-k: the most blocks that fit in micro-batches of 8 or more (or the classifier's, where fewer).
    k, blocks = rows["last-k@1/2"]["last_k"], len(named_blocks(mm.model))
    floor = min(MIN_LAST_K_CHUNK, mm.shape_for(classifier_names(mm.model), budget)[0].chunk)
    assert rows["last-k@1/2"]["micro_batch"] >= floor
    more = mm.shape_for(classifier_names(mm.model, k + 1), budget) if k < blocks else None
    assert more is None or more[0].chunk < floor


def test_bench_memory_measures_each_run_in_a_process_of_its_own_and_a_refused_budget_is_a_row(quick_bench, tmp_path,
                                                                                                monkeypatch):
    """Measured peaks of runs in fresh processes: each run's own growth over its level before training,
    never the next to nothing a run measures in a process whose earlier runs left their pages free.
    The process is given a growth before the first step of all the 1/2 budget leaves a plan: the
    bench's count says the planner fits 1/2, its run there has nothing left and refuses, and under the
    whole of full FT's count what is left holds the step the count fitted at 1/2. That refusal ended
    the whole bench (exit 2, no results); now its row does not fit, naming the budget, the smallest
    budget the run named and the run's line, and the other rows run."""
    mm = MemoryModel(quick_bench / "warmup", TrainConfig(epochs=1, batch_size=32, **SAME_NUMERICS))
    half = round(mm.full_mb / 2, 3)
    monkeypatch.setenv("EDGE_SEL_PROCESS_GROWTH_MB", str(half * (1 - RESERVE)))
    out = tmp_path / "bench"
    said = run_cli("bench", "memory", "--dataset", "synthetic", "--quick", "--quiet", "--subset", "64", "--test-subset",
                   "32", "--batch-size", "32", "--checkpoint", quick_bench / "warmup", "--budgets", "1/2,1",
                   "--methods", "planner", "--first-seed", "3", "--out", out)
    bench = json.loads((out / "bench.json").read_text())
    assert bench["seeds"] == [3] and (out / "runs" / "planner-at-1" / "seed3" / "summary.json").is_file()
    runs = [r for rs in bench["results"].values() for r in rs]
    assert len(runs) == 2 and all(r["measure_method"].startswith("rss-hwm") for r in runs)
    # Each counted step is a few MB; a process's first step also loads kernels and autograd's engine.
    assert all(r["measured_peak_mb"] > 1 for r in runs)
    table = (out / "table.md").read_text()
    assert "each run in a process of its own" in table
    assert bench["budgets_mb"]["1/2"] == half and bench["fits"]["planner@1/2"]["fits"] is True
    [refused] = bench["refused"]["planner@1/2"]
    assert (refused["seed"], refused["budget_mb"]) == (3, half) and refused["needs_mb"] > half
    assert refused["reason"].startswith(f"--memory-budget {half:g}: ") and f"{refused['needs_mb']} MiB" in refused["reason"]
    rows = {r["key"]: r for r in bench["rows"]}
    assert bench["results"]["planner@1/2"] == [] and "test_acc" not in rows["planner@1/2"]
    assert {k: rows["planner@1/2"][k] for k in ("fits", "budget_mb", "needs_mb", "refused_seeds", "refused_reasons")} \
        == {"fits": False, "budget_mb": half, "needs_mb": refused["needs_mb"], "refused_seeds": [3],
            "refused_reasons": [refused["reason"]]}
    assert rows["planner@1"]["seeds"] == 1 and rows["full FT"]["seeds"] == 1
    assert (f"| planner | 1/2 | {half:.1f} | does not fit (needs {refused['needs_mb']:.1f} MiB): the run refused its "
            "budget | - |") in table
    assert f"- planner@1/2 seed 3 under {half:.1f} MiB, needs {refused['needs_mb']:.1f} MiB: {refused['reason']}" in table
    assert "bench memory: 1 methods x 2 budgets x 1 seed" in said.output
    # The closing line's claim (the planner at 1/10 against full FT) leaves its refused runs out, and says so.
    planner = {"key": "planner@1/10", "fits": False, "budget_mb": 1.0, "needs_mb": 2.5, "refused_seeds": [3]}
    assert summary_line({"rows": [planner]}) == ("planner at 1/10 refused its budget (1.0 MiB; needs 2.5 MiB): "
                                                 "no difference from full FT")
    pair = {"diff_pts": 1.0, "ci_low": -1.0, "ci_high": 3.0, "n": 2}
    assert summary_line({"rows": [{**planner, "fits": True, "vs_full": pair}]}).endswith(
        "over 2 seeds; 1 seed refused its budget, left out")


def test_bench_memory_refuses_a_budget_that_is_not_a_fraction(tmp_path):
    result = run_cli("bench", "memory", "--dataset", "synthetic", "--quick", "--budgets", "1/0",
                     "--out", tmp_path / "b", expect=2)
    assert "--budgets" in result.output and "Traceback" not in result.output and not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, said", [(["--budgets", "1/4,1/4"], "--budgets: 1/4 is given twice (as 1/4)"),
                                        (["--budgets", "1/4,2/8"], "--budgets: 2/8 is given twice (as 1/4)"),
                                        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
                                        (["--subset", "0"], "--subset must be >= 1, got 0")])
def test_bench_memory_refuses_a_budget_given_twice_and_zero_seeds(tmp_path, args, said):
    """Issue [hardening], item 8: `--budgets 1/4,1/4` ran one budget twice and printed a zero-width
    interval as two seeds; `--seeds 0` ran one (0 read as "not given")."""
    result = run_cli("bench", "memory", "--dataset", "synthetic", "--quick", *args, "--out", tmp_path / "b", expect=2)
    assert f"edge-sel: error: {said}\n" in result.output and not (tmp_path / "b").exists()


def test_benches_of_other_seeds_merge_into_one(quick_bench, tmp_path, monkeypatch):
    """benchmarks/merge_bench_memory.py: seeds run apart pair as one bench's; a bench stopped before its
    bench.json gives the runs it finished; a seed in two benches, or other settings, are refused; runs
    that refused their budget are kept."""
    import shutil
    import sys
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from merge_bench_memory import main, merge
    for first in ("1", "2"):
        run_cli("bench", "memory", "--dataset", "synthetic", "--quick", "--quiet", "--subset", "64", "--test-subset",
                "32", "--batch-size", "32", "--checkpoint", quick_bench / "warmup", "--budgets", "1/2", "--methods",
                "planner", "--one-process", "--first-seed", first, "--out", tmp_path / f"b{first}")
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "b2", stopped)
    (stopped / "bench.json").unlink()
    alone = json.loads((tmp_path / "b2" / "bench.json").read_text())["results"]["planner@1/2"][0]
    rows_of_runs = lambda bench: {k: [{f: v for f, v in r.items() if f != "run_dir"} for r in rows]
                                  for k, rows in bench["results"].items()}
    assert rows_of_runs(merge([tmp_path / "b1", stopped])) == rows_of_runs(merge([tmp_path / "b1", tmp_path / "b2"]))
    monkeypatch.setattr(sys, "argv", ["merge", str(tmp_path / "b1"), str(stopped), "--out", str(tmp_path / "m")])
    main()
    merged = json.loads((tmp_path / "m" / "bench.json").read_text())
    rows = {r["key"]: r for r in merged["rows"]}
    assert merged["seeds"] == [1, 2] and rows["planner@1/2"]["vs_full"]["n"] == 2
    assert merged["results"]["planner@1/2"][1]["test_acc"] == alone["test_acc"]
    with pytest.raises(SystemExit, match="seed 1 of full FT is in more than one bench"):
        merge([tmp_path / "b1", tmp_path / "b1"])
    with pytest.raises(SystemExit, match="differ in"):
        merge([tmp_path / "b1", quick_bench])
    # A run that refused its budget stays named, and its seed still pairs the rows that ran.
    refusing = tmp_path / "refusing"
    refusing.mkdir()
    second = json.loads((tmp_path / "b2" / "bench.json").read_text())
    reason = "--memory-budget 2.7: no step fits; the smallest that does is 9.4 MiB (the classifier alone)"
    second["results"]["planner@1/2"] = []
    second["refused"] = {"planner@1/2": [{"seed": 2, "budget_mb": 2.7, "needs_mb": 9.4, "reason": reason, "run_dir": "-"}]}
    (refusing / "bench.json").write_text(json.dumps(second))
    merged = merge([tmp_path / "b1", refusing])
    assert merged["seeds"] == [1, 2] and merged["refused"] == second["refused"]
    assert [r["seed"] for r in merged["results"]["full FT"]] == [1, 2]
    assert [r["seed"] for r in merged["results"]["planner@1/2"]] == [1]
