"""The interface every meter (nvml, rapl, jetson, battery, estimate) implements.

A meter owns a few *components* (a GPU, a RAPL package, a Jetson rail, the battery). Each
`read()` returns, per component, a cumulative energy (components with a counter, or an
estimate) and/or an instantaneous power (components that must be integrated). The sampler
turns successive reads into joules per window; meters never integrate by themselves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

COUNTER = "counter"        # hardware energy counter, read as a difference
INTEGRATED = "integrated"  # power samples integrated over time by the sampler
ESTIMATED = "estimated"    # not a measurement: a model of the energy
METHOD_ORDER = (COUNTER, INTEGRATED, ESTIMATED)
# Appended to a window's method where other processes computed on the metered GPU during it: the
# joules are the card's, theirs included, not the run's own.
SHARED = "shared"


class EnergyWarning(UserWarning):
    """A sensor is missing, unreadable or stopped working; numbers may be partial."""


def warn(message: str) -> None:
    warnings.warn(message, EnergyWarning, stacklevel=3)


@dataclass(frozen=True)
class Component:
    name: str
    method: str
    # False for readings already contained in a counted component (a Jetson sub-rail inside
    # VDD_IN, RAPL psys): shown by `monitor`, never added to the total.
    counted: bool = True


@dataclass
class Reading:
    energy_j: float | None = None  # cumulative joules since the meter opened
    power_w: float | None = None   # instantaneous watts
    error: str | None = None       # why this component could not be read now


class Meter:
    """Base class. Constructors never raise for missing sensors: they set `unavailable`."""

    name = "meter"
    # Which parts of the machine the meter sees; two meters that overlap would count twice.
    covers: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.components: list[Component] = []
        self.unavailable: str | None = None  # reason, when the meter cannot be used
        self.detail: str = ""                # what was found, for describe()
        self.permission_denied = False       # unavailable only for lack of rights: worth a warning

    @property
    def available(self) -> bool:
        return self.unavailable is None and any(c.counted for c in self.components)

    @property
    def method(self) -> str:
        methods = {c.method for c in self.components if c.counted}
        return "+".join(m for m in METHOD_ORDER if m in methods)

    def read(self) -> dict[str, Reading]:
        raise NotImplementedError

    def temperatures(self) -> dict[str, float]:
        return {}

    def throttle_reasons(self) -> list[str]:
        return []

    def processes(self) -> tuple[int, int] | None:
        """(other processes, all processes) computing on what this meter reads, where the meter reads a
        device that others may share (a GPU: NVML reads the whole card); None where it cannot say."""
        return None

    # True for a meter whose `processes()` can answer: its windows then say with how many others
    # the device was shared.
    counts_processes = False

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {
            "name": self.name,
            "method": self.method,
            "components": [c.name for c in self.components if c.counted],
            "also_shown": [c.name for c in self.components if not c.counted],
            "detail": self.detail,
        }


NULL_ENERGY = {"energy_j": None, "energy_source": None, "energy_method": None, "energy_coverage": None,
               "avg_power_w": None, "max_temp_c": None}


class NullMeter:
    """Used when energy is not measured at all (tests and benchmarks of the loop itself): every window
    has no joules and no source."""
    total_j = 0.0

    def begin(self, name: str) -> None:
        pass

    def end(self, name: str) -> dict:
        return dict(NULL_ENERGY)
