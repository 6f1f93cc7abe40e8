"""Energy as the training loop sees it: real meters over this machine or a fake sysfs tree."""

import pytest
import torch

from edge_sel.energy import estimate
from fake_sysfs import orin_nano
from helpers import records, run_cli, summary


def finetune(ckpt, out, *extra, expect=0):
    return run_cli("finetune", "--checkpoint", ckpt, "--dataset", "synthetic", "--epochs", 2, "--batch-size", 32,
                   "--out", out, "--quiet", *extra, expect=expect)


def test_without_sensors_the_record_says_estimate(tiny_warm, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path / "empty-root"))
    finetune(tiny_warm, tmp_path / "run")
    for r in records(tmp_path / "run"):
        assert r["energy_source"] == "estimate" and r["energy_method"] == "estimated"
        assert r["energy_j"] > 0 and r["energy_coverage"] == 1.0
        assert r["eval_energy_j"] is not None
    s = summary(tmp_path / "run")
    assert s["totals"]["energy_method"] == "estimated"
    assert s["energy_meter"]["source"] == "estimate"


def test_jetson_rails_are_measured_through_the_sysfs_root(tiny_warm, tmp_path, monkeypatch):
    orin_nano(tmp_path / "root")
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path / "root"))
    finetune(tiny_warm, tmp_path / "run")
    recs = records(tmp_path / "run")
    for r in recs:
        assert r["energy_source"] == "jetson" and r["energy_method"] == "integrated"
        # Constant fake rails: the module total is the input rail, VDD_IN = 5 V x 1.4 A.
        assert r["avg_power_w"] == pytest.approx(7.0)
        assert r["energy_j"] == pytest.approx(7.0 * r["wall_s"], rel=0.2)
        assert r["max_temp_c"] is not None and r["max_temp_c"] < 100   # the 100 C PMIC placeholder is ignored


@pytest.fixture
def work_clock(monkeypatch):
    """The estimate's CPU time advanced by a microsecond per module call, so its joules follow the work
    a run does and not the host's load: a budget's rule is tested, not the wall clock (a step slowed by
    a busy host once took a run 12% past its budget)."""
    calls = [0]

    def count(module, inputs, output):
        calls[0] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    monkeypatch.setattr(estimate, "process_cpu_seconds", lambda: calls[0] * 1e-6)
    yield calls
    handle.remove()


def test_energy_budget_stops_cleanly_before_the_limit(tiny_warm, tmp_path, monkeypatch, work_clock):
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path / "empty-root"))
    finetune(tiny_warm, tmp_path / "full", "--epochs", 3)
    full = records(tmp_path / "full")
    spent = sum(r["energy_j"] + (r["eval_energy_j"] or 0) for r in full)
    assert work_clock[0] > 0 and spent > 0
    budget = spent * 0.5
    finetune(tiny_warm, tmp_path / "cut", "--epochs", 3, "--energy-budget", budget)
    cut = records(tmp_path / "cut")
    s = summary(tmp_path / "cut")
    assert s["stop_reason"] == "energy_budget" and cut[-1]["stop_reason"] == "energy_budget"
    assert sum(r["backward_samples"] for r in cut) < sum(r["backward_samples"] for r in full)
    assert (tmp_path / "cut" / "model.safetensors").is_file()
    # Everything the cut run measured (the starting checkpoint's evaluation included) stayed under it.
    measured = sum((r["energy_j"] or 0) + (r["eval_energy_j"] or 0) for r in records(tmp_path / "cut", baseline=True))
    assert 0 < measured <= budget
    # The budget ended the run: a resume is refused like that of a finished run, records untouched.
    result = run_cli("finetune", "--resume", tmp_path / "cut", expect=2)
    assert "energy budget" in result.output and records(tmp_path / "cut") == cut


def test_bad_energy_options_exit_2(tiny_warm, tmp_path):
    result = finetune(tiny_warm, tmp_path / "x", "--energy-budget", "-5", expect=2)
    assert "--energy-budget" in result.output
    result = finetune(tiny_warm, tmp_path / "x", "--meter", "geiger", expect=2)
    assert "geiger" in result.output
    assert not (tmp_path / "x").exists()
