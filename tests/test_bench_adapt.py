"""`edge-sel bench adapt`: paired statistics and a whole (tiny) run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sel.bench.adapt import ci95, paired
from edge_sel.methods.presets import apply_preset
from edge_sel.config import TrainConfig
from helpers import run_cli, synthetic_folder


def test_ci95_is_the_student_t_interval():
    mean, lo, hi = ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 / 3 ** 0.5) and mean - lo == pytest.approx(hi - mean)


def test_paired_difference_pairs_by_seed():
    results = {"a": [{"seed": 0, "test_acc": 0.50, "flops_train": 10}, {"seed": 1, "test_acc": 0.60, "flops_train": 10}],
               "b": [{"seed": 1, "test_acc": 0.55, "flops_train": 20}, {"seed": 0, "test_acc": 0.49, "flops_train": 20}]}
    p = paired(results, "a", "b")
    assert p["per_seed"] == pytest.approx([1.0, 5.0]) and p["diff_pts"] == pytest.approx(3.0)
    assert p["flops_ratio"] == pytest.approx(0.5) and p["n"] == 2 and not p["excludes_zero"]


def test_the_recipe_preset_keeps_what_the_user_chose():
    cfg = apply_preset(TrainConfig(method={"preset": "adapt"}, sparsity=None))
    assert (cfg.bn_adapt, cfg.strategy, cfg.sparsity, cfg.method["target_activation"]) == (500, "random", "rgn", 0.2)
    mine = apply_preset(TrainConfig(method={"preset": "adapt", "target_activation": 0.4}, strategy="sundew",
                                    sparsity="none", bn_adapt=200))
    assert (mine.bn_adapt, mine.strategy, mine.sparsity, mine.method["target_activation"]) == (200, "sundew", "none", 0.4)


def test_bench_adapt_quick_run(tmp_path):
    out = tmp_path / "bench"
    run_cli("bench", "adapt", "--dataset", "synthetic", "--quick", "--scenarios", "noise", "--quiet",
            "--methods", "no adaptation,bn re-estimation,dense,random@0.3,sundew@0.3,recipe", "--out", out)
    bench = json.loads((out / "bench.json").read_text())
    rows = bench["results"]["noise"]
    assert bench["seeds"] == [0, 1] and all(len(v) == 2 for v in rows.values())
    assert all(r["flops_train"] == 0 for r in rows["no adaptation"])
    dense = rows["dense"][0]["flops_train"]
    assert 0 < rows["bn re-estimation"][0]["flops_train"] < dense
    for seed in (0, 1):       # the gate and its control at the same activation spend about the same
        gate, control = rows["sundew@0.3"][seed]["flops_train"], rows["random@0.3"][seed]["flops_train"]
        assert abs(gate - control) / control < 0.15 and control < 0.5 * dense
    assert rows["recipe"][0]["flops_train"] < dense
    assert all(r["clean_test_acc"] is not None for r in rows["dense"])
    names = [(c["a"], c["b"]) for c in bench["comparisons"]["noise"]]
    assert ("sundew@0.3", "random@0.3") in names and ("recipe", "dense") in names
    assert (out / "accuracy-flops-noise.png").stat().st_size > 1000 and "paired difference" in (out / "table.md").read_text()


def test_bench_adapt_refuses_an_unknown_method(tmp_path):
    result = run_cli("bench", "adapt", "--dataset", "synthetic", "--quick", "--methods", "magic",
                     "--out", tmp_path / "b", expect=2)
    assert "--methods" in result.output and "Traceback" not in result.output


def test_bench_adapt_gives_a_folder_at_the_checkpoints_size(tiny_warm, tmp_path):
    """A 16 px warmup on a 12 px image folder: the runs fine-tune at the checkpoint's size, test on
    the class-balanced draw asked for, with the threads asked for."""
    images = synthetic_folder(tmp_path / "images")
    run_cli("bench", "adapt", "--checkpoint", tiny_warm, "--dataset", f"folder:{images}", "--scenarios", "noise",
            "--methods", "no adaptation,bn re-estimation", "--seeds", "1", "--subset", "8", "--quiet",
            "--test-subset", "4", "--threads", "1", "--out", tmp_path / "bench")
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert (bench["image_size"], bench["test_subset"], bench["threads"]) == (16, 4, 1)
    for rows in bench["results"]["noise"].values():
        data = json.loads((Path(rows[0]["run_dir"]) / "config.json").read_text())["data"]
        assert (data["image_size"], data["test_subset"]) == (16, 4)
