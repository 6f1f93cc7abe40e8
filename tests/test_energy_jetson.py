"""Jetson INA3221 / INA238 rails, thermal zones, and a rail that vanishes mid-run."""

import pytest
from fake_sysfs import (FakeClock, agx_orin, ina238_hwmon, ina3221_iio, orin_nano,
                        orin_nvml, thermal_zone)

from edge_sel.energy import EnergyWarning, Sysfs, open_meter
from edge_sel.energy.jetson import JetsonMeter
from edge_sel.energy.temps import TemperatureSensors


def test_jetpack6_hwmon_rails_total_is_vdd_in(tmp_path):
    rails = orin_nano(tmp_path)
    meter = JetsonMeter(Sysfs(tmp_path))
    assert [(c.name, c.counted) for c in meter.components] == [
        ("VDD_IN", True), ("VDD_CPU_GPU_CV", False), ("VDD_SOC", False)]
    readings = meter.read()
    assert readings["VDD_IN"].power_w == 7.0  # 5000 mV x 1400 mA
    assert readings["VDD_SOC"].power_w == 1.5

    clock = FakeClock()
    combined = open_meter(root=tmp_path, clock=clock, nvml=orin_nvml())
    assert combined.source == "jetson"
    combined.begin("epoch")
    clock.advance(2.0)
    rails["VDD_IN"][1].write_text("2200\n")  # 11 W
    combined.sample_once()
    clock.advance(1.0)
    fields = combined.end("epoch")
    # trapezoids: (7 + 11) / 2 * 2 s + 11 W * 1 s
    assert fields["energy_j"] == 29.0
    assert fields["energy_by_component"] == {"VDD_IN": 29.0}
    assert fields["energy_method"] == "integrated"
    assert fields["energy_coverage"] == 1.0
    assert fields["peak_power_w"] == 11.0
    assert fields["max_temp_c"] == 46.25  # the -256 C GPU zone is ignored


def test_agx_orin_sums_all_rails_and_skips_nc_and_sum_channel(tmp_path):
    agx_orin(tmp_path)
    meter = JetsonMeter(Sysfs(tmp_path))
    names = [c.name for c in meter.components]
    assert names == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    assert all(c.counted for c in meter.components)
    total = sum(r.power_w for r in meter.read().values())
    assert total == pytest.approx(5.0 + 3.0 + 2.0 + 0.9, rel=1e-12)


def test_configured_rails_override_the_default(tmp_path):
    orin_nano(tmp_path)
    meter = JetsonMeter(Sysfs(tmp_path), rails=["VDD_CPU_GPU_CV", "VDD_SOC", "VDD_MISSING"])
    assert [c.name for c in meter.components if c.counted] == ["VDD_CPU_GPU_CV", "VDD_SOC"]
    assert "VDD_MISSING" in meter.detail
    assert not JetsonMeter(Sysfs(tmp_path), rails=["NOPE"]).available


def test_jetpack4_iio_rails_in_milliwatts(tmp_path):
    ina3221_iio(tmp_path, "6-0040", [("POM_5V_IN", 4200), ("POM_5V_GPU", 800), ("POM_5V_CPU", 1200)])
    meter = JetsonMeter(Sysfs(tmp_path))
    assert [c.name for c in meter.components if c.counted] == ["POM_5V_IN"]
    assert meter.read()["POM_5V_IN"].power_w == 4.2
    assert meter.read()["POM_5V_CPU"].power_w == 1.2


def test_thor_ina238_power_in_microwatts(tmp_path):
    ina238_hwmon(tmp_path, "2-0044", "hwmon4", 38_000_000)
    meter = JetsonMeter(Sysfs(tmp_path))
    assert [c.name for c in meter.components] == ["VIN"]
    assert meter.read()["VIN"].power_w == 38.0


def test_thermal_zones_drop_bad_readings(tmp_path):
    thermal_zone(tmp_path, 0, "CPU-therm", 41500)
    thermal_zone(tmp_path, 1, "GPU-therm", -256000)
    thermal_zone(tmp_path, 2, "PMIC-Die", 100000)
    thermal_zone(tmp_path, 3, "thermal-fan-est", 40800)
    (tmp_path / "sys/class/thermal/thermal_zone4").mkdir(parents=True)
    (tmp_path / "sys/class/thermal/thermal_zone4/type").write_text("cv0-thermal\n")
    (tmp_path / "sys/class/thermal/thermal_zone4/temp").mkdir()  # read fails like an offline zone
    sensors = TemperatureSensors(Sysfs(tmp_path))
    assert [s.name for s in sensors.sensors] == ["CPU-therm", "GPU-therm", "PMIC-Die", "thermal-fan-est"]
    assert sensors.read() == {"CPU-therm": 41.5, "thermal-fan-est": 40.8}
    (tmp_path / "sys/class/thermal/thermal_zone1/temp").write_text("52000\n")  # GPU woke up
    assert sensors.read()["GPU-therm"] == 52.0


def test_vanishing_rail_lowers_coverage_warns_once_and_does_not_crash(tmp_path):
    rails = orin_nano(tmp_path)
    clock = FakeClock()
    meter = open_meter(root=tmp_path, clock=clock, nvml=orin_nvml())
    meter.begin("epoch")
    clock.advance(1.0)
    meter.sample_once()
    rails["VDD_IN"][1].unlink()  # hot-unplugged
    with pytest.warns(EnergyWarning, match="VDD_IN") as caught:
        for _ in range(3):
            clock.advance(1.0)
            meter.sample_once()
        clock.advance(1.0)
        fields = meter.end("epoch")
    assert len(caught) == 1
    assert fields["energy_coverage"] == 0.2  # 1 s of 5 s
    assert fields["energy_j"] == 7.0
    assert meter.power_w() is None
