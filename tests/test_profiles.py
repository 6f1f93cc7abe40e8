"""Device profiles: every shipped file validates, bad files name the key, `auto` detects fake
machines, and `edge-sel profiles` lists and shows them."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_sysfs import FakeGpu, FakeNvml, battery, mains, orin_nano, write

from edge_sel.cli import cli
from edge_sel.energy import METER_NAMES
from edge_sel.errors import InputError
from edge_sel.profiles import Profile, list_profiles, load_profile
from edge_sel.profiles.detect import detect, gpu_probe
from edge_sel.profiles.schema import METERS, SCHEMA

SHIPPED = ["desktop-gpu", "generic", "jetson-agx-orin", "jetson-nano", "jetson-orin-nano", "laptop-cpu",
           "raspberry-pi-5"]
NO_GPU = lambda: None  # noqa: E731


def test_the_shipped_profiles_are_all_there():
    assert list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_validates(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description
    assert Path(profile.file).name == f"{name}.toml" and Path(profile.file).is_file()
    if name == "generic":    # deliberately sets nothing but the automatic meter choice
        assert profile.settings() == {"meters": []}
        return
    for key in ("device", "precision", "batch_size", "strategy", "meters", "watts_per_core",
                "max_temp_c", "hysteresis_c"):
        assert getattr(profile, key) is not None, key
    assert profile.max_temp_c - profile.hysteresis_c > 40


def test_schema_and_profile_fields_agree():
    keys = [k for section in SCHEMA.values() for k in section if k != "extends"]
    assert len(keys) == len(set(keys))                      # unique across sections
    fields = set(Profile.__dataclass_fields__)
    assert set(keys) <= fields
    assert METERS == METER_NAMES


def test_jetson_profiles_pin_the_rails_that_make_the_module_total():
    assert load_profile("jetson-nano").rails == ("POM_5V_IN",)
    assert load_profile("jetson-orin-nano").rails == ("VDD_IN",)
    agx = load_profile("jetson-agx-orin").rails
    assert "VDD_IN" not in agx and set(agx) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    for name in ("jetson-nano", "jetson-orin-nano", "jetson-agx-orin"):
        assert load_profile(name).meters == ("jetson",)


def _write(tmp_path, text, name="board.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ('[thermal]\nmax_temp_c = "hot"\n',
     'thermal.max_temp_c: must be a number between 30 and 120, got "hot"'),
    ("[thermal]\nmax_temp_c = 150\n", "thermal.max_temp_c: must be a number between 30 and 120, got 150"),
    ("[train]\nbatch_size = 0\n", "train.batch_size: must be an integer between 1 and 65536, got 0"),
    ("[train]\nbatch_size = 12.5\n", "train.batch_size: must be an integer between 1 and 65536, got 12.5"),
    ("[train]\nbatch_size = true\n", "train.batch_size: must be an integer between 1 and 65536, got true"),
    ("[train]\nbatchsize = 8\n", "train.batchsize: unknown key (known: device, precision, batch_size, cpu_threads, memory_budget_mb)"),
    ('[train]\ndevice = "gpu"\n', 'train.device: must be one of "cpu", "cuda", "mps", "auto" or "cuda:N", got "gpu"'),
    ('[train]\nprecision = "fp8"\n', 'train.precision: must be one of "auto", "fp32", "bf16", "fp16", "mixed", got "fp8"'),
    ("[method]\ntarget_activation = 0\n",
     "method.target_activation: must be a number greater than 0 and at most 1, got 0"),
    ('[method]\nstrategy = "fastest"\n', 'method.strategy: must be one of "dense"'),
    ('[energy]\nmeters = "jetson"\n', 'energy.meters: must be a list of meter names'),
    ('[energy]\nmeters = ["jetson", "geiger"]\n', 'energy.meters: must be one of "nvml", "rapl"'),
    ('[energy]\nmeters = ["rapl", "rapl"]\n', 'energy.meters: names a value twice'),
    ("[energy]\nwatts_per_core = -2\n", "energy.watts_per_core: must be a number greater than 0"),
    ('[energy]\nmeters = ["rapl"]\nrails = ["VDD_IN"]\n', "energy.rails: only the jetson meter reads rails"),
    ("[cooling]\nfan = 1\n", "cooling: unknown key"),
    ("[thermal]\n", None),     # an empty table is fine
    ("thermal = 5\n", "[thermal]: must be a table, got 5"),
    ("name = 'My Board'\n", "name: must be a lower-case name"),
    ("[thermal\nmax_temp_c = 80\n", "not valid TOML"),
    ('extends = "jetson-tx9"\n', "extends: no shipped profile 'jetson-tx9'"),
])
def test_bad_files_name_the_file_and_the_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    if message is None:
        assert load_profile(str(path)).name == "board"
        return
    with pytest.raises(InputError) as err:
        load_profile(str(path))
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="--profile jetson-tx9: no such profile; choose one of desktop-gpu"):
        load_profile("jetson-tx9")
    with pytest.raises(InputError, match="no such file"):
        load_profile(str(tmp_path / "absent.toml"))


def test_extends_starts_from_a_shipped_profile(tmp_path):
    path = _write(tmp_path, 'extends = "jetson-orin-nano"\nname = "lab-orin"\n[train]\nbatch_size = 24\n'
                            'device = "cpu"\n[thermal]\nmax_temp_c = 70\n')
    profile = load_profile(str(path))
    assert profile.name == "lab-orin"
    assert (profile.batch_size, profile.device, profile.max_temp_c) == (24, "cpu", 70.0)
    assert profile.rails == ("VDD_IN",) and profile.strategy == "random" and profile.hysteresis_c == 5.0
    assert profile.description == ""     # the base's description is not this profile's


# ---- auto-detection on fake machines ----------------------------------------------------------

def test_auto_detects_an_orin_nano_from_its_device_tree(tmp_path):
    orin_nano(tmp_path)
    write(tmp_path, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    write(tmp_path, "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic")
    found = detect(tmp_path, cuda_probe=NO_GPU)
    assert found.name == "jetson-orin-nano"
    assert "NVIDIA Jetson Orin Nano Developer Kit" in found.reason
    profile = load_profile("auto", root=tmp_path, cuda_probe=NO_GPU)
    assert profile.name == "jetson-orin-nano" and profile.detected == found.reason


@pytest.mark.parametrize("model, compatible, expected", [
    ("NVIDIA Jetson Nano Developer Kit", "nvidia,p3449-0000-b00+p3448-0000-b00\0nvidia,jetson-nano\0nvidia,tegra210",
     "jetson-nano"),
    ("Jetson AGX Orin", "nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234", "jetson-agx-orin"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "nvidia,p3768-0000+p3767-0000", "jetson-orin-nano"),
    ("Custom carrier rev B", "acme,board\0nvidia,p3767-0005\0nvidia,tegra234", "jetson-orin-nano"),
    ("NVIDIA Jetson Xavier NX Developer Kit", "nvidia,p3668-0000\0nvidia,tegra194", "generic"),
    ("Raspberry Pi 5 Model B Rev 1.0", "raspberrypi,5-model-b\0brcm,bcm2712", "raspberry-pi-5"),
    ("Raspberry Pi 4 Model B Rev 1.4", "raspberrypi,4-model-b\0brcm,bcm2711", "generic"),
])
def test_auto_maps_device_tree_models(tmp_path, model, compatible, expected):
    write(tmp_path, "proc/device-tree/model", model + "\0")
    (tmp_path / "proc/device-tree/compatible").write_bytes(compatible.encode() + b"\0")
    assert detect(tmp_path, cuda_probe=NO_GPU).name == expected


def test_auto_detects_a_laptop_on_battery(tmp_path):
    battery(tmp_path, "BAT0", "Discharging", power_uw=12_000_000)
    mains(tmp_path, "AC", online=False)
    found = detect(tmp_path, cuda_probe=lambda: "torch sees a CUDA device")   # the battery wins
    assert found.name == "laptop-cpu" and "BAT0" in found.reason


def test_a_peripheral_battery_does_not_make_a_laptop(tmp_path):
    battery(tmp_path, "hidpp_battery_0", "Discharging")
    write(tmp_path, "sys/class/power_supply/hidpp_battery_0/scope", "Device")
    assert detect(tmp_path, cuda_probe=NO_GPU).name == "generic"


def test_auto_detects_a_cuda_desktop_through_nvml_or_torch(tmp_path):
    nvml = FakeNvml([FakeGpu(name="NVIDIA GeForce RTX 4090")])
    probe = lambda: gpu_probe(torch_cuda=lambda: False, nvml=nvml)  # noqa: E731  (a CPU torch)
    found = detect(tmp_path, cuda_probe=probe)
    assert found == found.__class__("desktop-gpu", "NVML counts 1 GPU(s)")
    assert not nvml.initialised                      # shut down after counting
    assert detect(tmp_path, cuda_probe=lambda: gpu_probe(torch_cuda=lambda: True)).name == "desktop-gpu"
    no_driver = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    assert gpu_probe(torch_cuda=lambda: False, nvml=no_driver) is None
    assert gpu_probe(torch_cuda=lambda: False, nvml=FakeNvml([])) is None
    assert detect(tmp_path, cuda_probe=NO_GPU).name == "generic"


def test_auto_reads_the_sysfs_root_from_the_environment(tmp_path, monkeypatch):
    write(tmp_path, "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0")
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path))
    assert load_profile("auto").name == "raspberry-pi-5"


# ---- edge-sel profiles ------------------------------------------------------------------------

def _invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def test_profiles_list_and_show():
    result = _invoke("profiles", "list")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()] == SHIPPED
    result = _invoke("profiles", "show", "jetson-orin-nano")
    assert result.exit_code == 0, result.output
    assert "[energy]" in result.output and 'rails = ["VDD_IN"]' in result.output
    assert "max_temp_c = 85.0" in result.output
    shown = json.loads(_invoke("profiles", "show", "laptop-cpu", "--json").output)
    assert shown["meters"] == ["battery", "rapl", "estimate"] and shown["budget_j"] == 20000.0


def test_a_profiles_budget_is_shown_with_its_source_and_nan_is_refused_naming_the_profile(tmp_path, capsys):
    """Issue [hardening], item 8: a profile's `memory_budget_mb = nan` blamed --memory-budget, which
    the user never gave, and `profiles show` printed it and exited 0, without the budget's source
    comments the docs promise (the extended profile's too)."""
    from helpers import run_main
    path = _write(tmp_path, 'extends = "jetson-nano"\nname = "lab-nano"\n[train]\nmemory_budget_mb = nan\n')
    said = f"{path}: train.memory_budget_mb: must be a number greater than 0 and at most 1e+07, got NaN"
    result = _invoke("profiles", "show", path)
    assert (result.exit_code, result.output.strip()) == (2, f"edge-sel: error: {said}")
    code, err = run_main(["finetune", "--checkpoint", tmp_path, "--dataset", "digits", "--epochs", "1",
                          "--out", tmp_path / "run", "--profile", path], capsys)
    assert (code, err) == (2, f"edge-sel: error: --profile {said}\n") or (code, err) == (2, f"edge-sel: error: {said}\n")
    path.write_text('extends = "jetson-nano"\nname = "lab-nano"\n[train]\nbatch_size = 16    # smaller images\n')
    shown = _invoke("profiles", "show", path).output.splitlines()
    budget = shown.index("memory_budget_mb = 1024.0")
    assert shown[budget - 3].startswith("# memory_budget_mb: of the 4 GB shared by CPU and GPU")
    assert shown[shown.index("batch_size = 16") - 1] == "# smaller images"


def test_profiles_detect_and_show_auto(tmp_path):
    orin_nano(tmp_path)
    write(tmp_path, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\0")
    result = _invoke("profiles", "detect", env={"EDGE_SEL_SYSFS_ROOT": str(tmp_path)})
    assert result.exit_code == 0 and result.output.startswith("jetson-orin-nano  (Jetson:")
    result = _invoke("profiles", "show", "auto", env={"EDGE_SEL_SYSFS_ROOT": str(tmp_path)})
    assert "# auto: Jetson" in result.output


def test_profiles_show_a_bad_file_exits_2(tmp_path):
    path = _write(tmp_path, "[train]\nbatch_size = -1\n", "laptop.toml")
    result = _invoke("profiles", "show", path)
    assert result.exit_code == 2
    assert result.output.strip() == (f"edge-sel: error: {path}: train.batch_size: must be an integer "
                                     "between 1 and 65536, got -1")
