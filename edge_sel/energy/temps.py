"""Temperatures from sysfs: thermal zones (all Linux, Jetson included) and CPU hwmon chips.

Known bad readings are dropped rather than reported: Jetson GPU zones read -256 C while the
GPU is rail-gated, `PMIC-Die` reads a fixed 100 C placeholder, and zones that fail at start
(offline Orin `cv*` zones) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import warn
from .sysfs import Sysfs

PLAUSIBLE_C = (-40.0, 150.0)   # outside this a sensor is offline or reporting a sentinel
PLACEHOLDERS = {"PMIC-Die": 100.0}
CPU_HWMON_CHIPS = ("coretemp", "k10temp", "zenpower")


@dataclass
class _Sensor:
    name: str
    path: Path
    failed: bool = False


class TemperatureSensors:
    def __init__(self, sysfs: Sysfs | None = None):
        self.sysfs = sysfs or Sysfs()
        self.sensors: list[_Sensor] = []
        for zone in self.sysfs.glob("sys/class/thermal/thermal_zone*"):
            kind = self.sysfs.read_optional(zone / "type")
            if kind:
                self._add(kind, zone / "temp")
        for chip_dir in self.sysfs.glob("sys/class/hwmon/hwmon*"):
            chip = self.sysfs.read_optional(chip_dir / "name")
            if chip not in CPU_HWMON_CHIPS:
                continue
            for temp in sorted(chip_dir.glob("temp*_input")):
                label = self.sysfs.read_optional(chip_dir / temp.name.replace("_input", "_label"))
                self._add(f"{chip}/{label or temp.name[:-len('_input')]}", temp)

    def _add(self, name: str, path: Path) -> None:
        try:
            self.sysfs.read_int(path)
        except (OSError, ValueError):
            return  # offline at start: never read it again (some hang or error on every read)
        while any(s.name == name for s in self.sensors):
            name += "'"
        self.sensors.append(_Sensor(name, path))

    def read(self) -> dict[str, float]:
        temps = {}
        for sensor in self.sensors:
            try:
                celsius = self.sysfs.read_int(sensor.path) / 1000.0
            except (OSError, ValueError) as e:
                if not sensor.failed:
                    sensor.failed = True
                    warn(f"temperature sensor {sensor.name} stopped answering ({e}); leaving it out")
                continue
            base_name = sensor.name.rstrip("'")
            if not PLAUSIBLE_C[0] < celsius < PLAUSIBLE_C[1] or PLACEHOLDERS.get(base_name) == celsius:
                continue
            temps[sensor.name] = celsius
        return temps
