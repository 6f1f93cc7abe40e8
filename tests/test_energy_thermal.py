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


def test_a_stop_request_ends_the_wait(tmp_path):
    thermal_zone(tmp_path, 0, "cpu-thermal", 95000)  # never cools
    clock = FakeClock()
    meter = open_meter(root=tmp_path, nvml=NO_GPU)
    guard = ThermalGuard(meter, max_temp_c=85.0, poll_s=1.0, sleep=clock.sleep, clock=clock)
    polls = []
    guard.should_stop = lambda: len(polls) >= 3 or polls.append(1)
    assert guard.wait_if_hot() == 4.0 and not guard.last_capped


def test_a_stuck_hot_sensor_cannot_stall_a_run(tmp_path, monkeypatch):
    """A sensor stuck at 95 C: every pause is cut at --max-pause, counted, and the run finishes."""
    from helpers import records, run_cli
    thermal_zone(tmp_path / "root", 0, "cpu-thermal", 95000)
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path / "root"))
    warm = tmp_path / "warm"
    run_cli("pretrain", "--dataset", "synthetic", "--subset", 40, "--epochs", 1, "--out", warm, "--quiet")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_cli("finetune", "--checkpoint", warm, "--dataset", "synthetic", "--subset", 40, "--batch-size", 16,
                "--epochs", 1, "--max-temp", 85, "--max-pause", 0.01, "--out", out, "--quiet")
    [r] = records(out)
    steps = 3                                        # 40 planned samples at batch 16: 16 + 16 + 8
    assert r["thermal_pauses_capped"] == steps and r["throttled_s"] >= steps * 0.01


def test_sigterm_while_cooling_stops_with_a_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from edge_sel.engine.loop.state import load_state
    from helpers import run_cli
    thermal_zone(tmp_path / "root", 0, "cpu-thermal", 95000)
    warm = tmp_path / "warm"
    run_cli("pretrain", "--dataset", "synthetic", "--subset", 40, "--epochs", 1, "--out", warm, "--quiet")
    out = tmp_path / "run"
    env = {**os.environ, "EDGE_SEL_SYSFS_ROOT": str(tmp_path / "root")}
    proc = subprocess.Popen([sys.executable, "-m", "edge_sel", "finetune", "--checkpoint", str(warm), "--dataset",
                             "synthetic", "--subset", "40", "--batch-size", "16", "--epochs", "1", "--max-temp", "85",
                             "--out", str(out), "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 300      # a hang guard: a loaded machine starts torch slowly
        while not (out / "state" / "current.pt").exists():      # written before the first step
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)                                            # now waiting for a sensor stuck at 95 C
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)            # well short of the 600 s maximum pause
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr          # a clean stop on SIGTERM, as systemd expects
    assert "--resume" in stdout
    assert load_state(out / "state")["progress"] is not None
