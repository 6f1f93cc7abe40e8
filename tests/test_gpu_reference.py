"""benchmarks/gpu_reference.sh's smoke run: every stage of the GPU reference, tiny, on this CPU, into
an output folder the device machine can send back (at most 8 files of at most 16 MiB), with the
seeds' published numbers beside ours; and a stage stopped by its time limit keeps what its runs
recorded."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_reference  # noqa: E402

SYSTEMS = ["sel-95", "warmup-sel", "sundew+layers (ours)", "random@ours", "dense"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu-reference")
    # Limits no loaded machine reaches: the smoke run checks every stage's result, not how fast they
    # ran (under load 3-6 its lite0 stage was stopped at the 60 s a quiet machine leaves it). A stage
    # stopped by its limit is the next test's, injected.
    env = dict(os.environ, SMOKE="1", OUT=str(base / "out"), WORK=str(base / "work"), SMOKE_LIMIT_S="3600",
               TOTAL_S="36000", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_reference.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr + (base / "out" / "run.log").read_text()
    return base, json.loads((base / "out" / "summary.json").read_text())


def test_the_smoke_run_writes_every_stage_into_a_folder_that_travels_back(smoke):
    base, summary = smoke
    files = sorted(p.name for p in (base / "out").iterdir())
    assert files == ["cuda-tests.txt", "gpu-check.json", "run.log", "summary.json", "table.md"]
    assert all((base / "out" / f).stat().st_size < 16 * 2**20 for f in files)
    skipped = "skipped (run.log says why)"
    assert {n: s["status"]["result"] for n, s in summary["stages"].items()} == {
        "install": skipped, "check": "ok", "cuda-tests": skipped, "data": "ok", "sel": "ok", "sundew": "ok",
        "lite0": "ok", "dense": "ok"}
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["nvml_present"] is False
    rows = {s["name"]: s for n, stage in summary["stages"].items() if n != "lite0" for s in stage.get("systems", [])}
    assert list(rows) == SYSTEMS
    for name, row in rows.items():
        assert 0 <= row["test_full_acc"] <= 1 and math.isfinite(row["energy_per_epoch_j"]), name
        assert row["epochs"] == 1 and row["precision"] == "training fp32, evaluation fp32 (given)", name
    # The random control ran at the activation its gated system realised, in the same stage.
    assert rows["random@ours"]["matched_activation"] == pytest.approx(rows["sundew+layers (ours)"]["activation"])
    assert rows["dense"]["published"]["test_full"] == 92.52
    runs = [r for stage in summary["stages"].values() for r in stage.get("runs", [])]
    assert runs and all(r["memory_measure_method"] == "rss-hwm" and r["memory_counted_mb"] > 0 for r in runs)
    table = (base / "out" / "table.md").read_text()
    assert "| dense | dense | 1 |" in table and "| 92.52 | 1398 |" in table
    bench_table = (base / "work" / "dense" / "table.md").read_text()
    assert "published test %" in bench_table and "SEL benchmark repository" in bench_table
    assert (base / "work" / "dense" / "init" / "seed0" / "model.safetensors").is_file()
    # Lite0 from the ImageNet weights' package, on the pack's images resized to the stage's size.
    [lite] = summary["stages"]["lite0"]["systems"]
    assert lite["epochs"] == 1 and 0 <= lite["test_full_acc"] <= 1
    card = json.loads((base / "work" / "lite0-init" / "model.json").read_text())
    assert card["architecture"] == "efficientnet_lite0" and card["input_shape"] == [3, 32, 32]
    assert card["normalization"]["mean"] == [0.5, 0.5, 0.5] and card["normalization"]["std"] == [0.5, 0.5, 0.5]


def test_a_stage_stopped_by_its_limit_keeps_the_epochs_it_recorded(smoke, tmp_path):
    base, _ = smoke
    work, out = tmp_path / "work", tmp_path / "out"
    run = work / "dense" / "runs" / "dense" / "seed0" / "train"
    run.mkdir(parents=True)
    out.mkdir()
    finished = base / "work" / "dense" / "runs" / "dense" / "seed0" / "train" / "metrics.jsonl"
    records = [json.loads(line) for line in finished.read_text().splitlines()]
    second = dict(records[-1], epoch=1, energy_j=7.0)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [*records, second]) + '\n{"epoch": 2, "wal')
    (work / "stages.jsonl").write_text(json.dumps({"stage": "dense", "result": "stopped at its 300 s limit",
                                                   "wall_s": 300, "limit_s": 300, "bench": True}) + "\n")
    assert gpu_reference.summarize(work, out) == 0
    facts = json.loads((out / "summary.json").read_text())["stages"]["dense"]["runs"][0]
    assert facts["epochs_recorded"] == 2 and facts["energy_per_epoch_j"][-1] == 7.0
    assert "dense: runs/dense/seed0/train stopped after 2 epoch(s) (stopped at its 300 s limit)" in \
        (out / "table.md").read_text()
