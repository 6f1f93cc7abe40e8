"""NVIDIA Jetson module power from the on-board INA3221 (and Thor's INA238) monitors.

The rails give power, not energy: the sampler integrates them. Layouts are found by probing
files, not by JetPack version:

- JetPack 5/6, mainline `ina3221` hwmon: `in<k>_label`, `in<k>_input` (mV), `curr<k>_input` (mA);
  `NC` channels and the `sum of shunt voltages` channel are skipped.
- JetPack 4, NVIDIA `ina3221x` iio: `rail_name_<k>`, `in_power<k>_input` (mW).
- AGX Thor, `ina238` hwmon: `power1_input` (uW, the hwmon convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import INTEGRATED, Component, Meter, Reading
from .sysfs import Sysfs

# Input rails that already hold the whole module (Nano POM_5V_IN, Orin/Xavier NX VDD_IN,
# Thor VIN). Boards without one (AGX Orin, AGX Xavier) are measured as the sum of all rails.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")

HWMON_DIRS = (
    "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*",
    "sys/bus/i2c/drivers/ina238/*/hwmon/hwmon*",
    "sys/class/hwmon/hwmon*",
)
IIO_RAIL_FILES = (
    "sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*",
    "sys/bus/i2c/devices/*/iio:device*/rail_name_*",
)
SKIPPED_LABELS = ("NC", "sum of shunt voltages")
PERMISSION_FIX = (
    "Jetson power rails are readable by root only on this board: {path}. Fix: run as root, "
    "or `sudo chmod a+r` the rail files (in*_input, curr*_input, in_power*_input) at boot, "
    "e.g. from a udev rule or a systemd unit."
)


@dataclass
class _Rail:
    label: str
    files: tuple[Path, ...]  # one power file, or a voltage and a current file
    per_watt: float          # the product of the file values divided by this is watts


class JetsonMeter(Meter):
    name = "jetson"
    covers = frozenset({"gpu", "cpu", "system"})

    def __init__(self, sysfs: Sysfs | None = None, rails: list[str] | None = None):
        super().__init__()
        self.sysfs = sysfs or Sysfs()
        self.rails = self._find_rails()
        if not self.rails:
            self.unavailable = "no INA3221/INA238 power monitors under /sys/bus/i2c (not a Jetson)"
            return
        present = [r.label for r in self.rails]
        if rails:
            total = [label for label in rails if label in present]
            missing = [label for label in rails if label not in present]
            if not total:
                self.unavailable = f"none of the configured rails {list(rails)} exist; found {present}"
                return
            why = "configured" + (f"; missing {missing}" if missing else "")
        else:
            inputs = [label for label in TOTAL_RAILS if label in present]
            total = inputs[:1] or present
            why = "module input rail" if inputs else "no input rail on this board: sum of all rails"
        try:
            for rail in self.rails:
                for path in rail.files:
                    self.sysfs.read_int(path)
        except PermissionError as e:
            self.unavailable = PERMISSION_FIX.format(path=self.sysfs.shown(Path(e.filename or "")))
            self.permission_denied = True
            return
        except (OSError, ValueError):
            pass  # one broken rail is reported per sample; the others still work
        self.components = [Component(r.label, INTEGRATED, r.label in total) for r in self.rails]
        self.detail = f"total = {' + '.join(total)} ({why}); rails: {', '.join(present)}"

    def _find_rails(self) -> list[_Rail]:
        rails: list[_Rail] = []
        for directory in self._each_once(HWMON_DIRS):
            rails += self._hwmon_rails(directory)
        for name_file in self._each_once(IIO_RAIL_FILES):
            rail = self._iio_rail(name_file)
            if rail:
                rails.append(rail)
        labels: set[str] = set()
        for rail in rails:  # two monitors may use the same label
            while rail.label in labels:
                rail.label += "'"
            labels.add(rail.label)
        return rails

    def _each_once(self, patterns) -> list[Path]:
        """What the patterns match under the sysfs root, each device once though links show it twice."""
        found: dict[Path, Path] = {}
        for pattern in patterns:
            for path in self.sysfs.glob(pattern):
                found.setdefault(path.resolve(), path)
        return list(found.values())

    def _hwmon_rails(self, directory: Path) -> list[_Rail]:
        chip = self.sysfs.read_optional(directory / "name")
        if chip == "ina238":
            label = self.sysfs.read_optional(directory / "power1_label") or "VIN"
            if (directory / "power1_input").exists():
                return [_Rail(label, (directory / "power1_input",), 1e6)]  # uW
            return []
        if chip != "ina3221":
            return []
        rails = []
        for label_file in sorted(directory.glob("in*_label")):
            channel = label_file.name[2:-len("_label")]
            label = self.sysfs.read_optional(label_file)
            volts, amps = directory / f"in{channel}_input", directory / f"curr{channel}_input"
            if not label or label in SKIPPED_LABELS or not (volts.exists() and amps.exists()):
                continue
            rails.append(_Rail(label, (volts, amps), 1e6))  # mV * mA
        return rails

    def _iio_rail(self, name_file: Path) -> _Rail | None:
        label = self.sysfs.read_optional(name_file)
        channel = name_file.name[len("rail_name_"):]
        if not label or label in SKIPPED_LABELS:
            return None
        power = name_file.parent / f"in_power{channel}_input"
        if power.exists():
            return _Rail(label, (power,), 1e3)  # mW
        volts = name_file.parent / f"in_voltage{channel}_input"
        amps = name_file.parent / f"in_current{channel}_input"
        if volts.exists() and amps.exists():
            return _Rail(label, (volts, amps), 1e6)  # mV * mA
        return None

    def read(self) -> dict[str, Reading]:
        readings = {}
        for rail in self.rails:
            try:
                value = 1.0
                for path in rail.files:
                    value *= self.sysfs.read_int(path)
                readings[rail.label] = Reading(power_w=value / rail.per_watt)
            except (OSError, ValueError) as e:
                readings[rail.label] = Reading(error=f"rail {rail.label}: {e}")
        return readings
