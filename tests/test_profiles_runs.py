"""--profile on finetune and monitor: the profile supplies defaults, explicit options win, the
profile's meters, rails and thermal guard are used, and the run records which profile it was."""

import json

import pytest
import torch
from click.testing import CliRunner
from fake_sysfs import agx_orin, orin_nano, write
from helpers import records, run_cli, summary

import edge_sel.energy
from edge_sel.cli import cli
from edge_sel.cli_monitor import monitor


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "ckpt"
    run_cli("pretrain", "--dataset", "synthetic", "--subset", 200, "--epochs", 1, "--batch-size", 64, "--out", out,
            "--quiet")
    return out


@pytest.fixture
def jetson_root(tmp_path, monkeypatch):
    root = tmp_path / "orin"
    orin_nano(root)
    write(root, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\0")
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(root))
    return root


@pytest.fixture
def guards(monkeypatch):
    """Every ThermalGuard a run builds, with how often the loop consulted it."""
    built = []

    class RecordingGuard(edge_sel.energy.ThermalGuard):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = 0
            built.append(self)

        def wait_if_hot(self):
            self.calls += 1
            return super().wait_if_hot()

    monkeypatch.setattr(edge_sel.energy, "ThermalGuard", RecordingGuard)
    return built


def lab_profile(tmp_path):
    """The Orin Nano profile on a CPU (this machine has no Jetson GPU), with its own batch size."""
    path = tmp_path / "lab-orin.toml"
    path.write_text('extends = "jetson-orin-nano"\nname = "lab-orin"\n[train]\ndevice = "cpu"\nbatch_size = 48\n')
    return path


def finetune(ckpt, out, *extra, expect=0):
    return run_cli("finetune", "--checkpoint", ckpt, "--dataset", "synthetic", "--subset", 200, "--epochs", 1,
                   "--out", out, "--quiet", *extra, expect=expect)


def test_finetune_with_a_profile_file_on_a_fake_jetson(warm, tmp_path, jetson_root, guards):
    threads_before = torch.get_num_threads()
    finetune(warm, tmp_path / "run", "--profile", lab_profile(tmp_path))
    s = summary(tmp_path / "run")
    assert s["config"]["batch_size"] == 48                     # the profile's batch size
    assert s["config"]["strategy"] == "random" and s["config"]["method"]["target_activation"] == 0.4
    assert s["config"]["device"] == "cpu" and s["device"] == "cpu"
    for r in records(tmp_path / "run"):
        assert r["energy_source"] == "jetson" and r["energy_method"] == "integrated"
        assert r["avg_power_w"] == pytest.approx(7.0)          # VDD_IN only, not the sum of the rails
    assert s["energy_meter"]["source"] == "jetson"
    profile = s["profile"]
    assert profile["name"] == "lab-orin" and profile["file"].endswith("lab-orin.toml")
    assert profile["applied"]["batch_size"] == 48 and profile["applied"]["rails"] == ["VDD_IN"]
    assert profile["kept"] == {} and profile["detected"] is None
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["profile"]["name"] == "lab-orin"
    assert config["energy"]["meters"] == ["jetson"] and config["energy"]["rails"] == ["VDD_IN"]
    assert (config["energy"]["max_temp_c"], config["energy"]["hysteresis_c"]) == (85.0, 5.0)
    assert config["energy"]["watts_per_core"] == 2.0
    # The profile's thermal guard is built and consulted between steps (the fake board is cool).
    assert len(guards) == 1 and (guards[0].max_temp_c, guards[0].hysteresis_c) == (85.0, 5.0)
    assert guards[0].calls >= 1 and guards[0].paused_s == 0.0
    assert torch.get_num_threads() == threads_before


def test_explicit_options_override_the_profile(warm, tmp_path, jetson_root, guards):
    finetune(warm, tmp_path / "run", "--profile", "auto", "--device", "cpu", "--batch-size", 32,
             "--strategy", "dense", "--max-temp", 95, "--meter", "estimate")
    s = summary(tmp_path / "run")
    assert s["config"]["batch_size"] == 32 and s["config"]["strategy"] == "dense"
    assert s["config"]["method"]["target_activation"] == 0.4  # not given: still the profile's
    assert s["totals"]["energy_source"] == "estimate"
    assert s["profile"]["name"] == "jetson-orin-nano" and "Orin Nano" in s["profile"]["detected"]
    assert s["profile"]["kept"] == {"device": "--device given", "batch_size": "--batch-size given",
                                    "strategy": "--strategy given", "meters": "--meter given",
                                    "max_temp_c": "--max-temp given"}
    assert guards[0].max_temp_c == 95.0


def test_a_preset_keeps_its_recipe_over_the_profile(warm, tmp_path, jetson_root):
    finetune(warm, tmp_path / "run", "--profile", lab_profile(tmp_path), "--preset", "ast-prod")
    s = summary(tmp_path / "run")
    assert s["config"]["strategy"] == "sundew" and s["config"]["batch_size"] == 128   # the CLI default
    assert set(s["profile"]["skipped"]) == {"batch_size", "strategy", "target_activation"}
    assert s["profile"]["applied"]["meters"] == ["jetson"]


def test_the_profile_threads_apply_during_the_run_only(warm, tmp_path, jetson_root, monkeypatch):
    import edge_sel.engine.runs.run as run_module
    seen = []
    real = run_module.finetune
    monkeypatch.setattr("edge_sel.cli.finetune",
                        lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    path = tmp_path / "threads.toml"
    path.write_text('extends = "jetson-orin-nano"\n[train]\ndevice = "cpu"\ncpu_threads = 1\n')
    finetune(warm, tmp_path / "run", "--profile", path)
    assert seen == [1] and torch.get_num_threads() == before


def test_a_bad_profile_file_exits_2_naming_the_key(warm, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[thermal]\nmax_temp_c = \"hot\"\n")
    result = CliRunner().invoke(cli, ["finetune", "--checkpoint", str(warm), "--dataset", "synthetic",
                                      "--epochs", "1", "--out", str(tmp_path / "x"), "--profile", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"edge-sel: error: {bad}: thermal.max_temp_c: must be a number "
                                     'between 30 and 120, got "hot"')
    assert not (tmp_path / "x").exists()
    result = CliRunner().invoke(cli, ["finetune", "--checkpoint", str(warm), "--dataset", "synthetic",
                                      "--epochs", "1", "--out", str(tmp_path / "x"), "--profile", "jetson-tx9"])
    assert result.exit_code == 2 and "--profile jetson-tx9: no such profile" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_cuda_profile_without_cuda_says_how_to_override(warm, tmp_path, jetson_root):
    result = run_cli("finetune", "--checkpoint", warm, "--dataset", "synthetic", "--epochs", 1,
                     "--out", tmp_path / "x", "--profile", "jetson-orin-nano", expect=2)
    assert "--profile jetson-orin-nano: train.device is cuda" in result.output
    assert "pass --device cpu" in result.output


def test_monitor_uses_the_profile_meters_and_rails(tmp_path):
    agx_orin(tmp_path)
    args = ["--json", "--samples", "1", "--interval", "0.01"]
    env = {"EDGE_SEL_SYSFS_ROOT": str(tmp_path)}
    result = CliRunner().invoke(monitor, args + ["--profile", "jetson-agx-orin"], env=env)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[-1])
    # AGX Orin has no input rail: the module is the sum of its four rails.
    assert row["source"] == "jetson" and row["power_w"] == pytest.approx(5.0 + 3.0 + 2.0 + 0.9)
    result = CliRunner().invoke(monitor, args + ["--profile", "raspberry-pi-5"], env=env)
    assert json.loads(result.stdout.splitlines()[-1])["source"] == "estimate"
    result = CliRunner().invoke(monitor, args + ["--profile", "raspberry-pi-5", "--meter", "jetson"], env=env)
    assert json.loads(result.stdout.splitlines()[-1])["source"] == "jetson"   # --meter wins


def test_monitor_with_a_bad_profile_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[energy]\nmeters = [\"geiger\"]\n")
    result = CliRunner().invoke(monitor, ["--samples", "1", "--profile", str(bad)])
    assert result.exit_code == 2 and "energy.meters: must be one of" in result.output
