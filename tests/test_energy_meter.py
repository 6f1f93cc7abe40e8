"""The window API: estimate, idle baseline, totals, automatic choice, sysfs root, thread."""

import os
import subprocess
import sys
import time

import pytest
from fake_sysfs import FakeClock, FakeNvml, orin_nano, orin_nvml, rapl_zone, thermal_zone

from edge_sel.energy import DEFAULT_WATTS_PER_CORE, ROOT_ENV, open_meter
from edge_sel.energy.choose import METER_CLASSES
from edge_sel.errors import InputError

NO_GPU = FakeNvml(init_error=12)
RECORD_FIELDS = {"energy_j", "energy_source", "energy_method", "energy_coverage", "avg_power_w",
                 "peak_power_w", "max_temp_c", "energy_by_component", "throttle_reasons"}


class CpuTime:
    def __init__(self):
        self.seconds = 100.0

    def __call__(self):
        return self.seconds


def estimate_meter(tmp_path, **kwargs):
    cpu, clock = CpuTime(), FakeClock()
    meter = open_meter(root=tmp_path, nvml=NO_GPU, clock=clock, sleep=clock.sleep, cpu_seconds=cpu, **kwargs)
    return meter, cpu, clock


def test_estimate_is_cpu_time_times_watts_per_core(tmp_path, monkeypatch):
    # Two cores the process may use, two threads: 1.5 busy cores are under the cap (tests run one thread).
    monkeypatch.setattr("edge_sel.energy.estimate.usable_cpus", lambda: 2)
    monkeypatch.setattr("torch.get_num_threads", lambda: 2)
    meter, cpu, clock = estimate_meter(tmp_path, watts_per_core=10.0)
    assert meter.source == "estimate"
    meter.begin("train")
    clock.advance(4.0)
    cpu.seconds += 6.0  # 1.5 cores busy
    fields = meter.end("train")
    assert RECORD_FIELDS <= set(fields)
    assert fields["energy_j"] == 60.0
    assert fields["energy_source"] == "estimate"
    assert fields["energy_method"] == "estimated"
    assert fields["energy_by_component"] == {"cpu": 60.0}
    assert fields["avg_power_w"] == 15.0
    assert fields["max_temp_c"] is None
    assert fields["throttle_reasons"] == []
    assert "energy_net_j" not in fields


def test_default_watts_per_core(tmp_path):
    meter, cpu, clock = estimate_meter(tmp_path)
    meter.begin("w")
    cpu.seconds += 2.0
    clock.advance(2.0)
    assert meter.end("w")["energy_j"] == 2.0 * DEFAULT_WATTS_PER_CORE


def test_idle_baseline_gives_net_energy(tmp_path):
    meter, cpu, clock = estimate_meter(tmp_path, watts_per_core=10.0)
    clock.on_sleep = lambda t: setattr(cpu, "seconds", cpu.seconds + 0.01)  # 0.1 core idle load
    assert meter.idle_baseline(2.0) == pytest.approx(1.0, rel=1e-9)
    assert meter.idle_power_w == pytest.approx(1.0, rel=1e-9)
    assert meter.total_j == 0.0  # the baseline is not training energy
    clock.on_sleep = None
    meter.begin("epoch")
    clock.advance(10.0)
    cpu.seconds += 10.0
    fields = meter.end("epoch")
    assert fields["energy_j"] == 100.0
    assert fields["idle_power_w"] == pytest.approx(1.0, rel=1e-9)
    assert fields["energy_net_j"] == pytest.approx(90.0, rel=1e-9)


def test_nested_windows_are_counted_once_in_total(tmp_path):
    meter, cpu, clock = estimate_meter(tmp_path, watts_per_core=1.0)
    meter.begin("epoch")
    meter.begin("train")
    cpu.seconds += 3.0
    clock.advance(3.0)
    assert meter.end("train")["energy_j"] == 3.0
    meter.begin("eval")
    cpu.seconds += 1.0
    clock.advance(1.0)
    assert meter.end("eval")["energy_j"] == 1.0
    assert meter.end("epoch")["energy_j"] == 4.0
    assert meter.total_j == 4.0
    cpu.seconds += 5.0  # outside any window
    clock.advance(5.0)
    meter.sample_once()
    assert meter.total_j == 4.0


def test_window_errors_and_context_manager(tmp_path):
    meter, cpu, clock = estimate_meter(tmp_path)
    with pytest.raises(ValueError):
        meter.end("never")
    with meter.window("w") as fields:
        with pytest.raises(ValueError):
            meter.begin("w")
        cpu.seconds += 1.0
        clock.advance(1.0)
    assert fields["energy_j"] == DEFAULT_WATTS_PER_CORE


def test_no_sensors_here_means_estimate(tmp_path):
    meter = open_meter(root=tmp_path, nvml=NO_GPU)
    info = meter.describe()
    assert info["source"] == "estimate" and info["method"] == "estimated"
    assert set(info["skipped"]) == {"nvml", "rapl", "jetson", "battery"}
    meter.close()


def test_this_machine_chooses_estimate():
    meter = open_meter()
    try:
        if meter.source != "estimate":
            pytest.skip(f"this machine has real sensors: {meter.source}")
        assert meter.method == "estimated"
    finally:
        meter.close()


def test_sysfs_root_from_environment(tmp_path, monkeypatch):
    orin_nano(tmp_path)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    meter = open_meter(nvml=orin_nvml())
    assert meter.source == "jetson"
    assert meter.describe()["sysfs_root"] == str(tmp_path)
    assert meter.temperatures()["cpu-thermal"] == 45.5
    explicit = open_meter(root=tmp_path / "elsewhere", nvml=NO_GPU)
    assert explicit.source == "estimate"


def test_prefer_list(tmp_path):
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    assert open_meter(["estimate"], root=tmp_path, nvml=NO_GPU).source == "estimate"
    assert open_meter(["rapl", "estimate"], root=tmp_path, nvml=NO_GPU).source == "rapl"
    skipped = open_meter(["rapl", "estimate"], root=tmp_path, nvml=NO_GPU).describe()["skipped"]
    assert "count again" in skipped["estimate"]
    with pytest.warns(UserWarning, match="Falling back"):
        assert open_meter(["battery"], root=tmp_path, nvml=NO_GPU).source == "estimate"
    with pytest.raises(InputError, match="gpu"):
        open_meter(["gpu"])
    with pytest.raises(InputError, match="watts_per_core"):
        open_meter(watts_per_core=0)
    with pytest.raises(InputError, match="interval"):
        open_meter(interval_s=0)
    assert set(METER_CLASSES) == {"nvml", "rapl", "jetson", "battery", "estimate"}


def test_max_temperature_comes_from_every_sensor(tmp_path):
    thermal_zone(tmp_path, 0, "x86_pkg_temp", 61000)
    thermal_zone(tmp_path, 1, "acpitz", 48000)
    meter, cpu, clock = estimate_meter(tmp_path)
    meter.begin("w")
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").write_text("75000\n")
    clock.advance(1.0)
    meter.sample_once()
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").write_text("62000\n")
    clock.advance(1.0)
    assert meter.end("w")["max_temp_c"] == 75.0


def test_sampler_thread_runs_and_stops(tmp_path):
    meter = open_meter(root=tmp_path, nvml=NO_GPU, interval_s=0.01)
    meter.start()
    meter.begin("w")
    time.sleep(0.1)
    fields = meter.end("w")
    meter.close()
    assert not meter.running
    assert fields["energy_samples"] >= 3
    assert fields["energy_coverage"] == 1.0


BURN = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.4:\n    pass\n"


def test_a_childs_cpu_time_is_charged_whole_when_it_is_waited_for(tmp_path):
    """A child's CPU time arrives in the sample after it is waited for, however short: the estimate
    capped it at that sample's wall time x cores and dropped most of it (a 3.7 s measuring child's 3.5
    CPU-s recorded as 3.19 J). This process's own time is capped; its children's is charged whole."""
    children_cpu_seconds = lambda: os.times().children_user + os.times().children_system
    meter = open_meter(["estimate"], root=tmp_path, nvml=NO_GPU, watts_per_core=10.0)
    meter.begin("child")
    before = children_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", BURN])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)       # it has run, and is not waited for yet
    meter.sample_once()
    assert child.wait() == 0
    fields = meter.end("child")
    used = children_cpu_seconds() - before
    assert used >= 0.4 and fields["energy_j"] >= used * 10.0
    assert fields["peak_power_w"] <= 10.0         # a power this process's one thread can draw
