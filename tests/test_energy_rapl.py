"""RAPL: wraparound, no double counting of psys / mmio, permissions."""

import warnings

import pytest
from fake_sysfs import RAPL_MAX_RANGE_UJ, FakeClock, FakeNvml, intel_laptop_rapl, rapl_zone, write

from edge_sel.energy import EnergyWarning, Sysfs, open_meter
from edge_sel.energy.rapl import RaplMeter, unwrap_delta

NO_GPU = FakeNvml(init_error=12)


def test_unwrap_delta():
    assert unwrap_delta(100, 250, RAPL_MAX_RANGE_UJ) == 150
    assert unwrap_delta(RAPL_MAX_RANGE_UJ - 500_000, 1_500_000, RAPL_MAX_RANGE_UJ) == 2_000_000


def test_wraparound_between_two_reads(tmp_path):
    energy = rapl_zone(tmp_path, "intel-rapl:0", "package-0", RAPL_MAX_RANGE_UJ - 500_000)
    clock = FakeClock()
    meter = open_meter(["rapl"], root=tmp_path, clock=clock, nvml=NO_GPU)
    meter.begin("epoch")
    clock.advance(1.0)
    energy.write_text("1500000\n")  # wrapped: 0.5 J before the wrap + 1.5 J after
    meter.sample_once()
    clock.advance(1.0)
    energy.write_text("4500000\n")
    fields = meter.end("epoch")
    assert fields["energy_j"] == 5.0
    assert fields["energy_by_component"] == {"package-0": 5.0}
    assert fields["energy_source"] == "rapl"
    assert fields["energy_method"] == "counter"
    assert fields["energy_coverage"] == 1.0
    assert fields["avg_power_w"] == 2.5
    assert fields["peak_power_w"] == 3.0


def test_psys_package_dram_mmio_are_not_double_counted(tmp_path):
    files = intel_laptop_rapl(tmp_path)
    meter = RaplMeter(Sysfs(tmp_path))
    counted = [c.name for c in meter.components if c.counted]
    shown = [c.name for c in meter.components if not c.counted]
    assert counted == ["package-0", "dram-0"]
    assert shown == ["psys"]  # core, uncore and the mmio duplicate are dropped

    clock = FakeClock()
    combined = open_meter(["rapl"], root=tmp_path, clock=clock)
    combined.begin("w")
    clock.advance(2.0)
    for key, joules in {"package-0": 10, "core": 6, "uncore": 1, "dram": 2, "psys": 20, "mmio": 10}.items():
        current = int(files[key].read_text())
        files[key].write_text(f"{current + joules * 1_000_000}\n")
    fields = combined.end("w")
    assert fields["energy_by_component"] == {"package-0": 10.0, "dram-0": 2.0}
    assert fields["energy_j"] == 12.0


def test_mmio_zone_is_used_when_msr_zone_is_missing(tmp_path):
    rapl_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 1_000_000)
    meter = RaplMeter(Sysfs(tmp_path))
    assert [c.name for c in meter.components] == ["package-0"]


def test_psys_counts_when_there_is_no_package_zone(tmp_path):
    rapl_zone(tmp_path, "intel-rapl:1", "psys", 1_000_000)
    meter = RaplMeter(Sysfs(tmp_path))
    assert [(c.name, c.counted) for c in meter.components] == [("psys", True)]


def test_nested_devices_virtual_layout(tmp_path):
    base = "sys/devices/virtual/powercap/intel-rapl"
    write(tmp_path, f"{base}/intel-rapl:0/name", "package-0")
    write(tmp_path, f"{base}/intel-rapl:0/energy_uj", 5)
    write(tmp_path, f"{base}/intel-rapl:0/max_energy_range_uj", RAPL_MAX_RANGE_UJ)
    write(tmp_path, f"{base}/intel-rapl:0/intel-rapl:0:0/name", "dram")
    write(tmp_path, f"{base}/intel-rapl:0/intel-rapl:0:0/energy_uj", 5)
    meter = RaplMeter(Sysfs(tmp_path))
    assert [c.name for c in meter.components] == ["package-0", "dram-0"]


def test_permission_error_explains_the_fix_and_falls_through(tmp_path, monkeypatch):
    intel_laptop_rapl(tmp_path)
    real_read = Sysfs.read_text

    def root_only(self, path):
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(self, path)

    monkeypatch.setattr(Sysfs, "read_text", root_only)
    with pytest.warns(EnergyWarning, match="root") as caught:
        meter = open_meter(root=tmp_path, nvml=NO_GPU)
    assert meter.source == "estimate"
    reason = meter.describe()["skipped"]["rapl"]
    assert "/sys/class/powercap/intel-rapl:0/energy_uj" in reason
    assert "chmod" in reason and "udev" in reason
    assert len([w for w in caught if "RAPL" in str(w.message)]) == 1


def test_nothing_found_is_unavailable(tmp_path):
    meter = RaplMeter(Sysfs(tmp_path))
    assert not meter.available
    assert "intel-rapl" in meter.unavailable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_meter(root=tmp_path, nvml=NO_GPU).close()
