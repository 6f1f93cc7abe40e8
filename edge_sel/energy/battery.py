"""Whole-laptop power from the battery's discharge rate (/sys/class/power_supply).

Valid only while the machine runs on battery: at least one battery `Discharging` and no
mains/USB supply online. Several batteries (BAT0 + BAT1) are summed. The fuel gauge updates
slowly and smooths, so this suits long windows (minutes), not single steps.
"""

from __future__ import annotations

from pathlib import Path

from .base import INTEGRATED, Component, Meter, Reading
from .sysfs import Sysfs

EXTERNAL_SUPPLY_TYPES = ("Mains", "USB")


class BatteryMeter(Meter):
    name = "battery"
    covers = frozenset({"gpu", "cpu", "system"})

    def __init__(self, sysfs: Sysfs | None = None):
        super().__init__()
        self.sysfs = sysfs or Sysfs()
        self.batteries: list[Path] = []
        self.supplies: list[Path] = []
        for directory in self.sysfs.glob("sys/class/power_supply/*"):
            kind = self.sysfs.read_optional(directory / "type")
            if kind == "Battery" or (kind is None and directory.name.startswith("BAT")):
                self.batteries.append(directory)
            elif kind in EXTERNAL_SUPPLY_TYPES:
                self.supplies.append(directory)
        if not self.batteries:
            self.unavailable = "no battery under /sys/class/power_supply"
            return
        not_discharging = self._not_discharging()
        if not_discharging:
            self.unavailable = f"battery not discharging ({not_discharging})"
            return
        self.components = [Component("battery", INTEGRATED)]
        if len(self.batteries) > 1:
            self.components += [Component(b.name, INTEGRATED, counted=False) for b in self.batteries]
        self.detail = "sum of " + ", ".join(b.name for b in self.batteries) + " while discharging"

    def _status(self, battery: Path) -> str:
        return self.sysfs.read_optional(battery / "status") or "Unknown"

    def _not_discharging(self) -> str | None:
        """Why the battery cannot measure the machine right now, or None when it can."""
        online = [s.name for s in self.supplies if self.sysfs.read_optional(s / "online") == "1"]
        if online:
            return f"on external power: {', '.join(online)} online"
        statuses = {b.name: self._status(b) for b in self.batteries}
        if "Discharging" not in statuses.values():
            return "status " + ", ".join(f"{name} {status}" for name, status in statuses.items())
        return None

    def _power_w(self, battery: Path) -> float:
        # The sign convention of power_now/current_now varies between firmwares: use magnitudes.
        power = battery / "power_now"
        if power.exists():
            return abs(self.sysfs.read_int(power)) / 1e6  # uW
        current = abs(self.sysfs.read_int(battery / "current_now"))  # uA
        return current * self.sysfs.read_int(battery / "voltage_now") / 1e12  # uA * uV

    def read(self) -> dict[str, Reading]:
        why_not = self._not_discharging()
        if why_not:
            return {c.name: Reading(error=f"battery not discharging ({why_not})") for c in self.components}
        readings = {}
        total = 0.0
        try:
            for battery in self.batteries:
                watts = self._power_w(battery) if self._status(battery) == "Discharging" else 0.0
                readings[battery.name] = Reading(power_w=watts)
                total += watts
        except (OSError, ValueError) as e:
            return {c.name: Reading(error=f"battery: {e}") for c in self.components}
        readings["battery"] = Reading(power_w=total)
        return readings
