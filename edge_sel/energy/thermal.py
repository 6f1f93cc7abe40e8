"""ThermalGuard: pause training between steps while the device is too hot.

Energy per epoch depends on temperature (leakage) and a throttled device runs slower, so a
guard that lets the device cool keeps epochs comparable. The time paused is reported
(record field `throttled_s`), never hidden.
"""

from __future__ import annotations

import time
from typing import Callable

from .base import warn


class ThermalGuard:
    def __init__(self, meter, max_temp_c: float | None = None, hysteresis_c: float = 5.0,
                 poll_s: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, max_pause_s: float | None = None):
        """`meter` is anything with `temperatures() -> {name: C}` (an EnergyMeter).
        `max_temp_c=None` disables the guard. `max_pause_s` bounds a single pause
        (None: wait as long as it takes)."""
        if hysteresis_c < 0 or poll_s <= 0:
            raise ValueError("hysteresis_c must be >= 0 and poll_s > 0")
        self.meter = meter
        self.max_temp_c = max_temp_c
        self.hysteresis_c = hysteresis_c
        self.poll_s = poll_s
        self.max_pause_s = max_pause_s
        self._sleep = sleep
        self._clock = clock
        self._warned_no_sensor = False
        self.paused_s = 0.0  # over the guard's lifetime
        self.pauses = 0
        self.capped = 0      # pauses ended by max_pause_s with the device still hot
        self.last_capped = False
        # Polled while waiting: a stop request (SIGTERM) ends the wait instead of waiting it out.
        self.should_stop: Callable[[], bool] = lambda: False

    def _hottest(self) -> float | None:
        return max(self.meter.temperatures().values(), default=None)

    def wait_if_hot(self) -> float:
        """Block while the hottest sensor is above max_temp_c, until it is back at or below
        max_temp_c - hysteresis_c. Returns the seconds paused (0.0 when not hot)."""
        if self.max_temp_c is None:
            return 0.0
        temp = self._hottest()
        if temp is None:
            if not self._warned_no_sensor:
                self._warned_no_sensor = True
                warn(f"thermal guard: no temperature sensor on this machine; "
                     f"max_temp_c={self.max_temp_c:g} cannot be enforced")
            return 0.0
        if temp <= self.max_temp_c:
            return 0.0
        resume_at = self.max_temp_c - self.hysteresis_c
        start = self._clock()
        self.last_capped = False
        while True:
            self._sleep(self.poll_s)
            paused = self._clock() - start
            temp = self._hottest()
            if temp is None or temp <= resume_at or self.should_stop():
                break
            if self.max_pause_s is not None and paused >= self.max_pause_s:
                # A stuck or misread sensor must not stall an unattended device forever.
                warn(f"thermal guard: still {temp:.1f} C after {paused:.0f} s; resuming anyway")
                self.capped += 1
                self.last_capped = True
                break
        self.paused_s += paused
        self.pauses += 1
        return paused
