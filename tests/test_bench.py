"""`edge-sel bench`: every system of the suite gets a row of finite numbers, random controls run at
the activation their gated system realised, the lottery counts both phases and keeps its mask,
and the reference suite puts the seeds' published numbers beside ours."""

import json
import math
from pathlib import Path

import pytest
import torch

from edge_sel.bench.runner import first_per_class, realised_activation
from edge_sel.bench.suites import edge_systems
from edge_sel.data.dataset import IndexedDataset
from edge_sel.methods.update.lottery import global_magnitude_mask
from edge_sel.report.runs import load_run

from helpers import records, run_cli

FINITE = ("test_full_acc", "test_100_acc", "best_val_acc", "flops_forward", "flops_backward", "flops_train",
          "train_wall_s", "energy_j", "energy_per_epoch_j", "activation", "samples_trained")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "edge"
    # No sysfs sensors (an empty root): RAPL, Jetson rails and batteries are absent, so without an
    # NVIDIA GPU every joule is the labelled estimate.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path_factory.mktemp("no-sensors")))
        result = run_cli("bench", "edge", "--quick", "--dataset", "digits", "--subset", 200, "--epochs", 2,
                         "--val-cap", 100, "--pretrain-epochs", 1, "--out", out, "--quiet")
    return out, json.loads((out / "bench.json").read_text()), result.output


def nvml_works() -> bool:
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


EXPECTED_ENERGY_KIND = "measured: nvml" if nvml_works() else "estimated"


def test_every_system_has_a_row_of_finite_numbers(edge):
    out, bench, output = edge
    names = [s["name"] for s in bench["systems"]]
    assert names == [s.name for s in edge_systems(2)]
    assert {"random@ast-prod", "random@ours", "lottery", "dense"} <= set(names)
    for system in bench["systems"]:
        (row,) = system["per_seed"]
        for key in FINITE:
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (system["name"], key)
        assert 0 <= row["test_full_acc"] <= 1 and 0 < row["activation"] <= 1
        assert row["energy_kind"] == EXPECTED_ENERGY_KIND, system["name"]
        # The empty sysfs root has no /proc/cpuinfo either: no bf16 instructions, so fp32, and said.
        assert row["precision"] == "training fp32, evaluation fp32 (no native bf16)", system["name"]
    assert "Precision (--precision; auto is measured per device): training fp32, evaluation fp32 (no native bf16)" \
        in (out / "table.md").read_text()
    table = (out / "table.md").read_text().splitlines()
    for name in names:
        assert sum(line.startswith(f"| {name} |") for line in table) == 1
    assert sum(line.startswith("| start checkpoint (no fine-tuning) |") for line in table) == 1
    assert (out / "table.csv").read_text().count("\n") == len(names) + 2     # header, start row, systems
    assert (out / "report" / "report.html").is_file() and "report:" in output


def test_random_controls_run_at_the_realised_activation(edge):
    _, bench, _ = edge
    by_name = {s["name"]: s for s in bench["systems"]}
    for control, gated in (("random@ast-prod", "ast-prod"), ("random@ours", "sundew+layers (ours)")):
        gated_run = load_run(bench_run_dir(by_name[gated]))
        row = by_name[control]["per_seed"][0]
        assert row["matched_activation"] == pytest.approx(realised_activation(gated_run))
        recs = records(bench_run_dir(by_name[control]))
        assert all(r["strategy"] == "random" for r in recs)
        # Same share of samples trained (rounding per epoch), same epochs and updater as the gated run.
        assert row["activation"] == pytest.approx(row["matched_activation"], abs=0.01)
        assert len(recs) == len(gated_run.records)
        config = json.loads((bench_run_dir(by_name[control]) / "config.json").read_text())
        gated_config = json.loads((bench_run_dir(by_name[gated]) / "config.json").read_text())
        for key in ("optimizer", "lr", "schedule", "batch_size", "sparsity", "seed"):
            assert config[key] == gated_config[key], key
    # ast-prod computes every row (its loss counts for the selected ones only): activation 1.
    ast = by_name["ast-prod"]["per_seed"][0]
    assert ast["activation"] == 1.0 and ast["gate_activation"] < 1.0


def bench_run_dir(system) -> Path:
    """The last phase's run directory of a system's first seed."""
    return Path(system["per_seed"][0]["run_dirs"][-1])


def test_lottery_counts_both_phases_and_keeps_pruned_weights_at_zero(edge):
    _, bench, _ = edge
    by_name = {s["name"]: s for s in bench["systems"]}
    lottery, dense = by_name["lottery"]["per_seed"][0], by_name["dense"]["per_seed"][0]
    # Phase 1 (1 epoch) + phase 2 (2 epochs) at dense FLOPs: 1.5 x the dense system's 2 epochs.
    assert lottery["epochs"] == 3
    assert lottery["flops_train"] == pytest.approx(1.5 * dense["flops_train"], rel=0.02)
    pruned_dir = bench_run_dir(by_name["lottery"])
    recs = records(pruned_dir)
    assert all(r["grad_sparsity"] == pytest.approx(0.8, abs=0.01) and not r["compute_saved_by_sparsity"]
               for r in recs)
    from safetensors.torch import load_file
    weights = load_file(str(pruned_dir / "model.safetensors"))
    mask = load_file(str(pruned_dir.parent / "prune-rewind" / "lottery_mask.safetensors"))
    for name, m in mask.items():
        assert torch.all(weights[name][m == 0] == 0), name


def test_global_magnitude_mask_prunes_the_smallest_share():
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 5))
    mask = global_magnitude_mask(model, 0.8)
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert kept == total - int(0.8 * total)
    smallest_kept = min(p.abs()[mask[n]].min().item() for n, p in model.named_parameters() if mask[n].any())
    largest_pruned = max(p.abs()[~mask[n]].max().item() for n, p in model.named_parameters() if (~mask[n]).any())
    assert smallest_kept > largest_pruned


def test_first_per_class_takes_the_first_k_of_each_class_in_index_order():
    labels = torch.tensor([1, 0, 1, 1, 0, 2, 1])
    ds = IndexedDataset(torch.zeros(7, 1, 2, 2, dtype=torch.uint8), labels, torch.tensor([6, 5, 4, 3, 2, 1, 0]),
                        ["a", "b", "c"])
    pos = first_per_class(ds, 2)
    assert sorted(ds.index[pos].tolist()) == [0, 1, 2, 3, 5]   # class 1: ids 0 and 3; class 0: 2, 5; class 2: 1


def test_bad_input_exits_2(tmp_path):
    result = run_cli("bench", "edge", "--quick", "--dataset", "digits", "--systems", "nope", "--out", tmp_path / "o",
                     expect=2)
    assert "--systems" in result.output
    result = run_cli("bench", "edge", "--quick", "--dataset", "digits", "--checkpoint", tmp_path / "missing",
                     "--out", tmp_path / "o", expect=2)
    assert "--checkpoint" in result.output
    assert not (tmp_path / "o").exists()
