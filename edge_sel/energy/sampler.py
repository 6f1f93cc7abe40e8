"""`EnergyMeter`: the chosen meters behind one window API, read by one sampler thread.

Each sample reads every component once. Counter components contribute the difference of
their counters between samples (so a window's energy is end minus begin, read exactly at
the window's edges); power components contribute the trapezoid between samples. `begin()`
and `end()` take a sample themselves, so windows start and stop exactly at the call.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from .base import COUNTER, ESTIMATED, METHOD_ORDER, Component, Meter, Reading, warn
from .temps import TemperatureSensors
from .window import Window

IDLE_WINDOW = "__idle_baseline__"
# Temperatures change over seconds; reading every zone at 10 Hz would about double the sampler's
# cost on a Jetson (about ten zones) for no information. Window edges always read them.
TEMPERATURE_PERIOD_S = 1.0


@dataclass
class _ComponentState:
    meter: str
    component: Component
    key: str                       # unique name across meters (energy_by_component key)
    ok: bool = False               # was the previous sample readable
    energy_j: float | None = None  # previous cumulative energy (counter components)
    power_w: float | None = None   # latest power
    warned: bool = False


class EnergyMeter:
    def __init__(self, meters: list[Meter], temperatures: TemperatureSensors | None = None,
                 interval_s: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 skipped: dict[str, str] | None = None, sysfs_root: str | None = None):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.meters = meters
        self.temperature_sensors = temperatures
        self.interval_s = float(interval_s)
        self.skipped = dict(skipped or {})
        self.sysfs_root = sysfs_root
        self.idle_power_w: float | None = None
        self.idle_shared_with: int | None = None     # others on the GPU while idle power was measured
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._windows: dict[str, Window] = {}
        self._states: list[_ComponentState] = []
        self._last_t: float | None = None
        self._last_sample: dict | None = None
        self._temps: dict[str, float] = {}
        self._temps_t: float | None = None
        self._processes: tuple[int, int] | None = None
        self._total_j = 0.0
        self._warned: set[str] = set()
        for meter in meters:
            for component in meter.components:
                key = component.name
                if any(s.key == key for s in self._states):
                    key = f"{meter.name}:{key}"
                self._states.append(_ComponentState(meter.name, component, key))

    # ---- what was chosen -------------------------------------------------------------

    @property
    def component_names(self) -> list[str]:
        """Every component, counted ones first (what `monitor` shows as columns)."""
        return [s.key for s in sorted(self._states, key=lambda s: not s.component.counted)]

    @property
    def counted(self) -> dict[str, tuple[str, str]]:
        return {s.key: (s.meter, s.component.method) for s in self._states if s.component.counted}

    @property
    def source(self) -> str:
        return "+".join(m.name for m in self.meters) or "none"

    @property
    def method(self) -> str:
        methods = {method for _, method in self.counted.values()}
        return "+".join(m for m in METHOD_ORDER if m in methods) or "unavailable"

    def describe(self) -> dict:
        return {
            "source": self.source,
            "method": self.method,
            "meters": [m.describe() for m in self.meters],
            "skipped": dict(self.skipped),
            "temperature_sensors": [s.name for s in self.temperature_sensors.sensors]
            if self.temperature_sensors else [],
            "interval_s": self.interval_s,
            "sysfs_root": self.sysfs_root,
            "idle_power_w": self.idle_power_w,
            **({"idle_shared_with": self.idle_shared_with} if self.counts_processes else {}),
        }

    @property
    def counts_processes(self) -> bool:
        return any(m.counts_processes for m in self.meters)

    # ---- sampling ----------------------------------------------------------------------

    def start(self) -> "EnergyMeter":
        """Start the sampler thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="edge-sel-energy", daemon=True)
                self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_once()
            except Exception as e:  # the sampler must outlive any sensor bug
                self._warn_once("sampler", f"energy sampler error: {e!r}")

    def sample_once(self, read_temperatures: bool | None = None) -> dict:
        """Read every sensor once and add the interval since the previous sample to every
        open window. The thread calls this; tests and `monitor` may call it directly.
        Temperatures are read when `read_temperatures` is true, or by default when the last
        reading is at least TEMPERATURE_PERIOD_S old."""
        with self._lock:
            t = self._clock()
            readings: dict[tuple[str, str], Reading] = {}
            reasons: list[str] = []
            for meter in self.meters:
                try:
                    found = meter.read()
                except Exception as e:
                    found = {c.name: Reading(error=f"{meter.name}: {e}") for c in meter.components}
                readings.update({(meter.name, name): r for name, r in found.items()})
                try:
                    reasons += meter.throttle_reasons()
                except Exception:
                    pass
            if read_temperatures is None:
                read_temperatures = self._temps_t is None or t - self._temps_t >= TEMPERATURE_PERIOD_S
            if read_temperatures:       # the processes on a GPU, as seldom as its temperature
                self._temps, self._temps_t = self._read_temperatures(), t
                self._processes = self._read_processes()
            temps = self._temps
            dt = None if self._last_t is None else t - self._last_t

            joules: dict[str, float] = {}
            covered: dict[str, float] = {}
            for state in self._states:
                reading = readings.get((state.meter, state.component.name)) or Reading(error="no reading")
                energy, covered_s = self._advance(state, reading, dt)
                if state.component.counted:
                    joules[state.key], covered[state.key] = energy, covered_s
            self._last_t = t

            counted_powers = [s.power_w for s in self._states if s.component.counted and s.power_w is not None]
            power = sum(counted_powers) if counted_powers else None
            max_temp = max(temps.values()) if temps else None
            if any(name != IDLE_WINDOW for name in self._windows):
                self._total_j += sum(joules.values())
            for window in self._windows.values():
                for key in joules:
                    window.add_interval(key, joules[key], covered[key])
                window.add_sample(power, max_temp, reasons)
                window.add_processes(self._processes)
            self._last_sample = {
                "t": t,
                "power_w": power,
                "components": {s.key: s.power_w for s in self._states if s.power_w is not None},
                "temperatures": dict(temps),
                "throttle_reasons": sorted(set(reasons)),
                "processes": self._processes,
            }
            return self._last_sample

    def _advance(self, state: _ComponentState, reading: Reading, dt: float | None) -> tuple[float, float]:
        """Update one component's state with a new reading; return the joules and the covered
        seconds of the interval since the previous sample."""
        has_counter = state.component.method in (COUNTER, ESTIMATED)
        if reading.error is None and (reading.energy_j if has_counter else reading.power_w) is None:
            reading = Reading(error="sensor gave no value")
        if reading.error is not None:
            if state.component.counted and not state.warned:
                state.warned = True
                warn(f"energy sensor {state.key} stopped working ({reading.error}); "
                     "energy_coverage of open windows will be below 1")
            state.ok, state.power_w = False, None
            return 0.0, 0.0

        joules, covered_s = 0.0, 0.0
        interval = state.ok and dt is not None
        power = reading.power_w
        if has_counter:
            if interval:
                delta = reading.energy_j - state.energy_j
                if delta < 0:  # a driver reload resets NVML's counter: this interval is lost
                    self._warn_once(f"reset:{state.key}", f"energy counter of {state.key} went backwards; "
                                    "an interval is missing from the total")
                else:
                    joules, covered_s = delta, dt
                    if power is None and dt > 0:
                        power = delta / dt
            state.energy_j = reading.energy_j
        elif interval:
            joules, covered_s = (state.power_w + power) / 2.0 * dt, dt
        state.ok, state.power_w = True, power
        return joules, covered_s

    def _read_temperatures(self) -> dict[str, float]:
        temps = self.temperature_sensors.read() if self.temperature_sensors else {}
        for meter in self.meters:
            try:
                temps.update(meter.temperatures())
            except Exception:
                pass
        return temps

    def _read_processes(self) -> tuple[int, int] | None:
        """(others, all) over the meters that can count the processes on their device."""
        counted = None
        for meter in self.meters:
            if not meter.counts_processes:
                continue
            try:
                found = meter.processes()
            except Exception:
                found = None
            if found is not None:
                counted = found if counted is None else (counted[0] + found[0], counted[1] + found[1])
        return counted

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message)

    # ---- windows -------------------------------------------------------------------------

    def begin(self, name: str) -> None:
        with self._lock:
            if name in self._windows:
                raise ValueError(f"energy window {name!r} is already open")
            sample = self.sample_once(read_temperatures=True)
            self._windows[name] = Window(
                name, sample["t"],
                max_temp_c=max(sample["temperatures"].values(), default=None),
                throttle_reasons=set(sample["throttle_reasons"]),
            )
            self._windows[name].add_processes(sample["processes"])

    def end(self, name: str) -> dict:
        """Close the window and return its record fields (see Window.fields)."""
        with self._lock:
            if name not in self._windows:
                raise ValueError(f"energy window {name!r} was not begun")
            sample = self.sample_once(read_temperatures=True)
            window = self._windows.pop(name)
            readable = {s.key for s in self._states if s.ok}
            idle = None if name == IDLE_WINDOW else self.idle_power_w
            return window.fields(sample["t"], self.counted, readable, idle, self.counts_processes)

    @contextmanager
    def window(self, name: str) -> Iterator[dict]:
        """`with meter.window("epoch") as fields:` fills `fields` when the block ends."""
        fields: dict = {}
        self.begin(name)
        try:
            yield fields
        finally:
            fields.update(self.end(name))

    @property
    def total_j(self) -> float:
        """Joules measured while at least one window was open, each interval counted once
        (nested windows such as an epoch and its phases are not added twice)."""
        with self._lock:
            return self._total_j

    def idle_baseline(self, seconds: float = 5.0) -> float:
        """Measure idle power for `seconds` (the caller keeps the machine idle) and store it as
        `idle_power_w`; later windows also report `energy_net_j` and `idle_power_w`."""
        self.begin(IDLE_WINDOW)
        try:
            if self.running:
                self._sleep(seconds)
            else:  # no thread: sample here so that power meters are integrated properly
                deadline = self._clock() + seconds
                while (left := deadline - self._clock()) > 0:
                    self._sleep(min(self.interval_s, left))
                    self.sample_once()
        finally:
            fields = self.end(IDLE_WINDOW)
        self.idle_power_w = fields["avg_power_w"] or 0.0
        self.idle_shared_with = fields.get("energy_shared_with")   # others computing: not idle
        return self.idle_power_w

    # ---- instantaneous -------------------------------------------------------------------

    def power_w(self) -> float | None:
        """Total power now (the latest sample while the thread runs). None until a counter
        meter has two samples."""
        if self.running and self._last_sample is not None:
            return self._last_sample["power_w"]
        return self.sample_once()["power_w"]

    def temperatures(self) -> dict[str, float]:
        with self._lock:
            return self._read_temperatures()

    def max_temperature(self) -> float | None:
        return max(self.temperatures().values(), default=None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1.0)
            self._thread = None
        for meter in self.meters:
            meter.close()

    def __enter__(self) -> "EnergyMeter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
