"""ThermalGuard with a fake temperature that cools over injected time."""

import warnings

import pytest
from fake_sysfs import FakeClock, FakeNvml, thermal_zone

from edge_sel.energy import EnergyWarning, ThermalGuard, open_meter

NO_GPU = FakeNvml(init_error=12)


def test_pauses_until_cooled_below_the_hysteresis(tmp_path):
    zone = thermal_zone(tmp_path, 0, "cpu-thermal", 90000)
    clock = FakeClock()
    # cools by 2 C per second of pause
    clock.on_sleep = lambda t: zone.write_text(f"{int((90 - 2 * t) * 1000)}\n")
    meter = open_meter(root=tmp_path, nvml=NO_GPU)
    guard = ThermalGuard(meter, max_temp_c=85.0, hysteresis_c=5.0, poll_s=0.5,
                         sleep=clock.sleep, clock=clock)
    paused = guard.wait_if_hot()
    assert paused == 5.0  # 90 C -> 80 C
    assert guard.paused_s == 5.0 and guard.pauses == 1
    assert guard.wait_if_hot() == 0.0  # cool now


def test_not_hot_or_disabled_returns_immediately(tmp_path):
    thermal_zone(tmp_path, 0, "cpu-thermal", 85000)
    meter = open_meter(root=tmp_path, nvml=NO_GPU)

    def no_sleep(seconds):
        raise AssertionError("must not sleep")

    assert ThermalGuard(meter, max_temp_c=85.0, sleep=no_sleep).wait_if_hot() == 0.0
    assert ThermalGuard(meter, max_temp_c=None, sleep=no_sleep).wait_if_hot() == 0.0


def test_no_sensor_warns_once(tmp_path):
    meter = open_meter(root=tmp_path, nvml=NO_GPU)
    guard = ThermalGuard(meter, max_temp_c=80.0)
    with pytest.warns(EnergyWarning, match="no temperature sensor") as caught:
        assert guard.wait_if_hot() == 0.0
        assert guard.wait_if_hot() == 0.0
    assert len(caught) == 1


def test_max_pause_bounds_a_pause(tmp_path):
    thermal_zone(tmp_path, 0, "cpu-thermal", 95000)  # never cools
    clock = FakeClock()
    meter = open_meter(root=tmp_path, nvml=NO_GPU)
    guard = ThermalGuard(meter, max_temp_c=85.0, poll_s=1.0, sleep=clock.sleep, clock=clock, max_pause_s=10.0)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert guard.wait_if_hot() == 10.0
