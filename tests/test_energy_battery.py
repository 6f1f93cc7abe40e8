"""Battery discharge: valid only while discharging; several batteries are summed."""

import pytest
from fake_sysfs import FakeClock, FakeNvml, battery, mains

from edge_sel.energy import EnergyWarning, Sysfs, open_meter
from edge_sel.energy.battery import BatteryMeter

NO_GPU = FakeNvml(init_error=12)


def test_discharging_battery_is_chosen_and_integrated(tmp_path):
    bat = battery(tmp_path, "BAT0", "Discharging", power_uw=12_000_000)
    mains(tmp_path, "AC", online=False)
    clock = FakeClock()
    meter = open_meter(root=tmp_path, clock=clock, nvml=NO_GPU)
    assert meter.source == "battery"
    meter.begin("epoch")
    clock.advance(10.0)
    (bat / "power_now").write_text("8000000\n")
    fields = meter.end("epoch")
    assert fields["energy_j"] == 100.0  # (12 W + 8 W) / 2 x 10 s
    assert fields["energy_source"] == "battery"
    assert fields["energy_method"] == "integrated"
    assert fields["energy_coverage"] == 1.0


def test_charging_battery_is_not_used(tmp_path):
    battery(tmp_path, "BAT0", "Charging", power_uw=20_000_000)
    mains(tmp_path, "AC", online=True)
    meter = BatteryMeter(Sysfs(tmp_path))
    assert not meter.available
    assert "external power" in meter.unavailable
    chosen = open_meter(root=tmp_path, nvml=NO_GPU)
    assert chosen.source == "estimate"
    assert "battery" in chosen.describe()["skipped"]


def test_two_batteries_are_summed_with_current_times_voltage(tmp_path):
    battery(tmp_path, "BAT0", "Discharging", power_uw=-6_000_000)  # negative sign on some firmware
    battery(tmp_path, "BAT1", "Discharging", current_ua=-500_000, voltage_uv=12_000_000)
    meter = BatteryMeter(Sysfs(tmp_path))
    readings = meter.read()
    assert readings["BAT0"].power_w == 6.0
    assert readings["BAT1"].power_w == 6.0
    assert readings["battery"].power_w == 12.0
    assert [c.name for c in meter.components if c.counted] == ["battery"]


def test_idle_second_battery_adds_nothing(tmp_path):
    battery(tmp_path, "BAT0", "Discharging", power_uw=9_000_000)
    battery(tmp_path, "BAT1", "Not charging", power_uw=0)
    assert BatteryMeter(Sysfs(tmp_path)).read()["battery"].power_w == 9.0


def test_plugging_in_mid_window_lowers_coverage(tmp_path):
    bat = battery(tmp_path, "BAT0", "Discharging", power_uw=10_000_000)
    clock = FakeClock()
    meter = open_meter(["battery"], root=tmp_path, clock=clock)
    meter.begin("epoch")
    clock.advance(30.0)
    meter.sample_once()
    (bat / "status").write_text("Charging\n")
    with pytest.warns(EnergyWarning, match="not discharging"):
        clock.advance(30.0)
        fields = meter.end("epoch")
    assert fields["energy_j"] == 300.0
    assert fields["energy_coverage"] == 0.5
