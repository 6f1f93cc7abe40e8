"""NVML against a fake module (counter, power integration, Tegra NotSupported) and a
contract test against the installed nvidia-ml-py."""

import inspect
import os
import re
from pathlib import Path

import pynvml
import pytest
from fake_sysfs import FakeClock, FakeGpu, FakeNvml, orin_nvml, rapl_zone

from edge_sel.energy import EnergyWarning, open_meter
from edge_sel.energy import nvml as nvml_module
from edge_sel.energy.nvml import NVML_NAMES, THROTTLE_BITS, NvmlMeter, visible_gpu_indices


class Counter:
    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value


def test_energy_counter_is_used_where_supported(tmp_path):
    energy = Counter(1_000_000)  # mJ since driver load
    gpu = FakeGpu(energy_mj=energy, power_mw=250_000, temp_c=71, event_reasons=0x20 | 0x1)
    clock = FakeClock()
    meter = open_meter(["nvml"], root=tmp_path, clock=clock, nvml=FakeNvml([gpu]))
    meter.begin("epoch")
    clock.advance(4.0)
    energy.value += 1_000_000
    fields = meter.end("epoch")
    assert fields["energy_j"] == 1000.0
    assert fields["energy_by_component"] == {"gpu0": 1000.0}
    assert fields["energy_source"] == "nvml"
    assert fields["energy_method"] == "counter"
    assert fields["energy_coverage"] == 1.0
    assert fields["avg_power_w"] == 250.0
    assert fields["peak_power_w"] == 250.0  # from nvmlDeviceGetPowerUsage
    assert fields["max_temp_c"] == 71.0
    assert fields["throttle_reasons"] == ["gpu0:sw_thermal_slowdown"]  # idle is not throttling


def test_power_is_integrated_where_the_counter_is_unsupported(tmp_path):
    power = Counter(100_000)  # mW
    fake = FakeNvml([FakeGpu(name="GeForce MX250", energy_mj=None, power_mw=power, temp_c=60)])
    clock = FakeClock()
    meter = open_meter(["nvml"], root=tmp_path, clock=clock, nvml=fake)
    assert meter.describe()["meters"][0]["detail"] == "gpu0 GeForce MX250 (power samples)"
    meter.begin("epoch")
    clock.advance(1.0)
    power.value = 300_000
    meter.sample_once()
    clock.advance(1.0)
    fields = meter.end("epoch")
    assert fields["energy_j"] == 200.0 + 300.0  # (100 + 300) / 2 x 1 s + 300 W x 1 s
    assert fields["energy_method"] == "integrated"
    assert fields["peak_power_w"] == 300.0


def test_mixed_gpus_report_a_mixed_method(tmp_path):
    fake = FakeNvml([FakeGpu(energy_mj=Counter(0), power_mw=1000), FakeGpu(power_mw=2000)])
    meter = open_meter(["nvml"], root=tmp_path, clock=FakeClock(), nvml=fake)
    assert meter.method == "counter+integrated"
    meter.begin("w")
    assert meter.end("w")["energy_method"] == "counter+integrated"


def test_counter_survives_a_failing_power_reading(tmp_path):
    energy = Counter(0)
    gpu = FakeGpu(energy_mj=energy, power_mw=50_000)
    clock = FakeClock()
    meter = open_meter(["nvml"], root=tmp_path, clock=clock, nvml=FakeNvml([gpu]))
    meter.begin("w")
    gpu.errors["nvmlDeviceGetPowerUsage"] = 15  # GPU_IS_LOST for the power query only
    clock.advance(2.0)
    energy.value = 100_000
    fields = meter.end("w")
    assert fields["energy_j"] == 100.0
    assert fields["energy_coverage"] == 1.0
    assert fields["peak_power_w"] == 50.0  # from the counter when power is missing


def test_tegra_not_supported_everywhere_falls_through(tmp_path):
    meter = NvmlMeter(nvml=orin_nvml())
    assert not meter.available
    assert "NotSupported" in meter.unavailable
    chosen = open_meter(root=tmp_path, nvml=orin_nvml())
    assert chosen.source == "estimate"
    assert "NotSupported" in chosen.describe()["skipped"]["nvml"]


def test_library_not_found_is_unavailable():
    meter = NvmlMeter(nvml=FakeNvml(init_error=12))
    assert not meter.available
    assert "Library Not Found" in meter.unavailable


def test_new_api_names_first_then_deprecated_ones():
    gpu = FakeGpu(energy_mj=Counter(0), power_mw=1000, temp_c=55, event_reasons=0x40,
                  errors={"nvmlDeviceGetTemperatureV": 13, "nvmlDeviceGetCurrentClocksEventReasons": 13})
    fake = FakeNvml([gpu])
    meter = NvmlMeter(nvml=fake)
    assert meter.temperatures() == {"gpu0": 55.0}
    assert meter.throttle_reasons() == ["gpu0:hw_thermal_slowdown"]
    assert "nvmlDeviceGetTemperature" in fake.calls
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in fake.calls

    modern = FakeNvml([FakeGpu(energy_mj=Counter(0), temp_c=50, event_reasons=0,
                               errors={"nvmlDeviceGetTemperature": 26})])
    assert NvmlMeter(nvml=modern).temperatures() == {"gpu0": 50.0}
    assert "nvmlDeviceGetTemperature" not in modern.calls


def test_counter_reset_loses_the_interval_with_a_warning(tmp_path):
    energy = Counter(5_000_000)
    clock = FakeClock()
    meter = open_meter(["nvml"], root=tmp_path, clock=clock,
                       nvml=FakeNvml([FakeGpu(energy_mj=energy, power_mw=100_000)]))
    meter.begin("w")
    clock.advance(1.0)
    energy.value = 100_000  # driver reloaded
    with pytest.warns(EnergyWarning, match="backwards"):
        meter.sample_once()
    clock.advance(1.0)
    energy.value = 200_000
    fields = meter.end("w")
    assert fields["energy_j"] == 100.0
    assert fields["energy_coverage"] == 0.5


def test_gpu_and_cpu_meters_combine(tmp_path):
    package = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    energy = Counter(0)
    clock = FakeClock()
    meter = open_meter(root=tmp_path, clock=clock, nvml=FakeNvml([FakeGpu(energy_mj=energy, power_mw=1)]))
    assert meter.source == "nvml+rapl"
    assert "battery" in meter.describe()["skipped"]
    meter.begin("epoch")
    clock.advance(10.0)
    energy.value = 2_000_000
    package.write_text("500000000\n")
    fields = meter.end("epoch")
    assert fields["energy_by_component"] == {"gpu0": 2000.0, "package-0": 500.0}
    assert fields["energy_j"] == 2500.0
    assert fields["energy_source"] == "nvml+rapl"
    assert fields["energy_method"] == "counter"


def test_cuda_visible_devices_limits_the_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpu_indices(2) == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,1")
    assert visible_gpu_indices(2) == [0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f1c")
    assert visible_gpu_indices(2) == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_indices(2) == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = FakeNvml([FakeGpu(power_mw=1), FakeGpu(power_mw=1)])
    assert [c.name for c in NvmlMeter(nvml=fake).components] == ["gpu0", "gpu1"]


# ---- contract with the real bindings ------------------------------------------------------

def test_every_nvml_name_used_exists_in_nvidia_ml_py():
    missing = [name for name in NVML_NAMES if not hasattr(pynvml, name)]
    assert missing == []


def test_the_module_uses_no_other_nvml_names():
    source = Path(nvml_module.__file__).read_text()
    used = set(re.findall(r"\bnvml\.(\w+)", source)) | set(re.findall(r"\bpynvml\.(\w+)", source))
    assert used, "the pattern must find the calls"
    assert used <= set(NVML_NAMES), used - set(NVML_NAMES)


def test_fake_matches_the_real_bindings():
    for name in ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_LIBRARY_NOT_FOUND",
                 "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_DEPRECATED", "NVML_TEMPERATURE_GPU"):
        assert getattr(FakeNvml, name) == getattr(pynvml, name), name
    for name in NVML_NAMES:
        real = getattr(pynvml, name)
        if callable(real) and name.startswith("nvml"):
            fake_params = len(inspect.signature(getattr(FakeNvml([]), name)).parameters)
            real_required = [p for p in inspect.signature(real).parameters.values()
                             if p.default is inspect.Parameter.empty]
            assert fake_params == len(real_required), name


def test_throttle_bits_match_the_real_constants():
    real = {
        "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
        "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
        "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
        "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    }
    assert {name: bit for bit, name in THROTTLE_BITS.items()} == real


def test_real_nvml_never_raises():
    meter = NvmlMeter()  # no driver here: NVMLError_LibraryNotFound -> unavailable
    try:
        if not meter.available:
            assert meter.unavailable
    finally:
        meter.close()


def test_only_the_training_gpu_is_metered(monkeypatch):
    """Two GPUs, the run trains on the second (a CUDA ordinal that NVML numbers differently): NVML
    reads that one only, found by UUID; without UUIDs every visible GPU is read."""
    import torch

    from edge_sel import device_caps
    from edge_sel.energy.nvml import NvmlMeter
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    other = FakeGpu(name="other job's GPU", energy_mj=1000, power_mw=300_000, uuid="GPU-aaaa")
    ours = FakeGpu(name="training GPU", energy_mj=5000, power_mw=100_000, uuid="GPU-bbbb")
    meter = NvmlMeter(nvml=FakeNvml([other, ours]), gpu_uuids=["GPU-bbbb"])
    assert [g.handle for g in meter.gpus] == [ours]
    assert len(NvmlMeter(nvml=FakeNvml([other, ours])).gpus) == 2

    class Props:
        uuid = "bbbb"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props())
    assert device_caps.gpu_uuids(torch.device("cuda")) == ["GPU-bbbb"]
    assert device_caps.gpu_uuids(torch.device("cpu")) is None


# ---- a card shared with other processes ---------------------------------------------------

def shared_meter(tmp_path, pids, **kwargs):
    energy, clock = Counter(0), FakeClock()
    gpu = FakeGpu(energy_mj=energy, power_mw=100_000, pids=pids)
    meter = open_meter(["nvml"], root=tmp_path, clock=clock, sleep=clock.sleep, nvml=FakeNvml([gpu]), **kwargs)
    return meter, energy, clock


def test_a_run_alone_on_the_card_says_so(tmp_path):
    meter, energy, clock = shared_meter(tmp_path, [os.getpid()])
    meter.begin("epoch")
    clock.advance(2.0)
    energy.value = 300_000
    fields = meter.end("epoch")
    assert fields["energy_method"] == "counter" and fields["energy_j"] == 300.0
    assert fields["energy_shared_with"] == 0 and fields["energy_gpu_processes"] == 1


def test_other_processes_on_the_card_make_the_window_shared(tmp_path):
    """NVML's counter is the whole card's: a window during which two other processes computed on it
    says so, in its method too, whenever in the window they came."""
    pids = [os.getpid()]
    meter, energy, clock = shared_meter(tmp_path, lambda: list(pids))
    meter.begin("epoch")
    clock.advance(1.5)
    pids += [4242, 4343]
    meter.sample_once(read_temperatures=True)
    pids[1:] = []           # gone again before the window ends
    clock.advance(1.5)
    energy.value = 900_000
    fields = meter.end("epoch")
    assert fields["energy_shared_with"] == 2 and fields["energy_gpu_processes"] == 3
    assert fields["energy_method"] == "counter+shared"
    meter.begin("next")
    assert meter.end("next")["energy_method"] == "counter"      # alone again


def test_a_run_on_the_gpu_that_nvml_lists_under_another_pid_counts_one_as_its_own(tmp_path):
    gpu = FakeGpu(energy_mj=Counter(0), power_mw=1000, pids=[7, 8], uuid="GPU-ours")
    assert NvmlMeter(nvml=FakeNvml([gpu]), gpu_uuids=["GPU-ours"]).processes() == (1, 2)
    assert NvmlMeter(nvml=FakeNvml([gpu])).processes() == (2, 2)    # not training there: both are others


def test_a_card_that_cannot_list_its_processes_says_nothing_of_sharing(tmp_path):
    gpu = FakeGpu(energy_mj=Counter(0), power_mw=1000, pids=None)       # NotSupported
    meter = open_meter(["nvml"], root=tmp_path, clock=FakeClock(), nvml=FakeNvml([gpu]))
    meter.begin("w")
    fields = meter.end("w")
    assert fields["energy_shared_with"] is None and fields["energy_method"] == "counter"


def test_idle_power_measured_with_others_on_the_card_says_so(tmp_path):
    meter, energy, clock = shared_meter(tmp_path, [os.getpid(), 99])
    clock.on_sleep = lambda t: setattr(energy, "value", int(t * 60_000))     # 60 W
    assert meter.idle_baseline(2.0) == pytest.approx(60.0)
    assert meter.idle_shared_with == 1 and meter.describe()["idle_shared_with"] == 1
    meter.begin("epoch")
    clock.advance(1.0)
    energy.value += 100_000
    fields = meter.end("epoch")
    assert fields["idle_power_w"] == pytest.approx(60.0) and fields["energy_net_j"] == pytest.approx(40.0)


def test_shared_joules_are_not_shown_as_the_runs_own():
    from edge_sel.engine.runs.summary import summarize
    from edge_sel.report.runs import energy_kind
    from edge_sel.report.summary import energy_label
    alone = {"energy_j": 10.0, "energy_source": "nvml", "energy_method": "counter", "energy_shared_with": 0}
    shared = dict(alone, energy_method="counter+shared", energy_shared_with=3)
    assert energy_kind([alone, alone]) == ("nvml", "measured: nvml")
    source, kind = energy_kind([alone, shared])
    assert kind.startswith("shared:") and "3 other process(es)" in kind
    totals = summarize([shared, alone], {})["totals"]
    assert totals["energy_method"] == "counter+shared" and totals["energy_shared_with"] == 3
    assert "not this run's own" in energy_label(totals["energy_method"])
    assert energy_label(summarize([alone], {})["totals"]["energy_method"]) == "measured"
    assert "energy_shared_with" not in summarize([{"energy_j": 1.0, "energy_method": "counter"}], {})["totals"]


def test_ranks_whose_meter_saw_others_make_the_worlds_joules_shared():
    from edge_sel.engine.runs.ddp import combine_energy
    alone = {"energy_j": 5.0, "energy_source": "nvml", "energy_method": "counter", "energy_coverage": 1.0,
             "energy_window_s": 1.0, "energy_shared_with": 0}
    assert combine_energy([alone, dict(alone)], 2)["energy_method"] == "counter"
    both = combine_energy([alone, dict(alone, energy_method="counter+shared", energy_shared_with=1)], 2)
    assert both["energy_method"] == "counter+shared" and both["energy_shared_with"] == 1


def test_a_run_on_the_gpu_that_nvml_shows_no_process_claims_nothing():
    """A sandbox that hides processes lists none, the run's own neither: no 'alone' is claimed."""
    gpu = FakeGpu(energy_mj=Counter(0), power_mw=1000, pids=[], uuid="GPU-ours")
    assert NvmlMeter(nvml=FakeNvml([gpu]), gpu_uuids=["GPU-ours"]).processes() is None
    assert NvmlMeter(nvml=FakeNvml([gpu])).processes() == (0, 0)
