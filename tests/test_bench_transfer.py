"""`edge-sel bench transfer`: the start evaluated once per seed, each method's row, the paired
differences, and the sparse update's set as its run trained it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sel.core.records import read_records
from edge_sel.core.source_memory import read_source_memory
from edge_sel.methods.update.fixed_sets import bias_norm_names, sparse_names
from edge_sel.models import load_checkpoint
from helpers import digits_warmup_with_memory, run_cli, run_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    warm = digits_warmup_with_memory(root / "warm")
    run_cli("bench", "transfer", "--checkpoint", warm, "--dataset", "digits", "--methods", "sparse,sundew@0.4,random@0.4",
            "--seeds", "1", "--epochs", "1", "--subset", "200", "--test-subset", "100", "--val-subset", "50",
            "--one-process", "--threads", "1", "--quiet", "--out", root / "bench")
    return warm, root / "bench"


def test_rows_pairs_and_one_start_evaluation_per_seed(bench):
    warm, out = bench
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["start", "full FT", "sparse", "sundew@0.4", "random@0.4"]
    table = (out / "table.md").read_text()
    assert all(f"\n| {name} | " in table for name in rows) and "TinyTL-B (biases)" in table
    # One seed: no interval, said in words (not [+nan, +nan]); a planned row's budget and plan in the table.
    assert "nan" not in table and "| n/a (1 seed) |" in table
    assert f"| {rows['sparse']['budget_mb']:.1f} ({rows['sparse']['trained_tensors']} tensors" in table
    # The start is evaluated once per seed, by its own run; no method evaluates it again.
    runs = {name: Path(rs[0]["run_dir"]) for name, rs in result["results"].items()}
    baselines = {name: sum(r.get("phase") == "baseline" for r in read_records(d / "metrics.jsonl"))
                 for name, d in runs.items()}
    assert baselines == {"start": 1, "full FT": 0, "sparse": 0, "sundew@0.4": 0, "random@0.4": 0}
    start = result["results"]["start"][0]
    for name in ("full FT", "sparse", "sundew@0.4", "random@0.4"):
        r = result["results"][name][0]
        assert r["forgetting_pts"] == pytest.approx(100 * (start["clean_test_acc"] - r["clean_test_acc"]))
    # Paired by seed: Sundew against random at the same activation, and against full fine-tuning.
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert set(pairs) == {("sundew@0.4", "random@0.4"), ("sundew@0.4", "full FT")}
    acc = {name: rs[0]["test_acc"] for name, rs in result["results"].items()}
    assert pairs[("sundew@0.4", "random@0.4")]["per_seed"] == pytest.approx([100 * (acc["sundew@0.4"] - acc["random@0.4"])])
    assert rows["sparse"]["vs_full"]["diff_pts"] == pytest.approx(100 * (acc["sparse"] - acc["full FT"]))
    assert (out / "accuracy-memory.png").stat().st_size > 1000 and (out / "report.html").exists()


def test_the_sparse_update_trains_the_chosen_set(bench):
    warm, out = bench
    result = json.loads((out / "results.json").read_text())
    model, card = load_checkpoint(warm)
    fisher = read_source_memory(warm, card.input_shape, card.source_memory).fisher
    chosen = sparse_names(model, {n: float(f.sum()) for n, f in fisher.items()}, 0.1)
    run = Path(result["results"]["sparse"][0]["run_dir"])
    plan = json.loads((run / "config.json").read_text())["memory_plan"]
    assert set(plan["trainable"]) == chosen and bias_norm_names(model) < chosen
    weights = sum(p.numel() for n, p in model.named_parameters() if n in chosen - bias_norm_names(model))
    assert 0 < weights <= 0.1 * sum(p.numel() for p in model.parameters())
    assert 0 < result["results"]["sparse"][0]["counted_peak_mb"] < result["full_ft_counted_mb"]


@pytest.mark.parametrize("option, said", [(("--methods", "fullft"), "--methods: unknown fullft"),
                                           (("--from-imagenet", "edgecnn"), "--from-imagenet: the model 'edgecnn'")])
def test_a_bad_option_is_one_line(bench, tmp_path, capsys, option, said):
    warm, _ = bench
    start = ["--checkpoint", warm] if option[0] != "--from-imagenet" else []
    code, err = run_main(["bench", "transfer", *start, "--dataset", "digits", *option, "--out", tmp_path / "b"], capsys)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


def test_benches_of_other_seeds_merge_into_one(bench, tmp_path, monkeypatch):
    """tools/merge_bench_transfer.py: a bench of another seed pairs with this one's (the paired
    differences then over two seeds); a seed in two benches, or other settings, are refused."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    from merge_bench_transfer import merge
    _, out = bench
    first = json.loads((out / "results.json").read_text())
    second = json.loads(json.dumps(first))
    for rows in second["results"].values():
        for r in rows:
            r["seed"], r["test_acc"] = 1, r["test_acc"] - 0.01 * (r is rows[0])
    merged = merge([first, second])
    assert merged["seeds"] == [0, 1] and merged["merged_from"] == 2
    with pytest.raises(SystemExit, match="a seed is in more than one bench"):
        merge([first, first])
    with pytest.raises(SystemExit, match="differ in epochs"):
        merge([first, {**second, "epochs": first["epochs"] + 1}])
    from edge_sel.bench.transfer_report import write_outputs
    write_outputs(merged, tmp_path)
    pairs = {(p["a"], p["b"]): p for p in merged["pairs"]}
    assert len(pairs[("sundew@0.4", "random@0.4")]["per_seed"]) == 2
    assert "Merged from 2 benches" in (tmp_path / "table.md").read_text()

