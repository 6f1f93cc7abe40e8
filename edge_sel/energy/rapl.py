"""CPU energy from RAPL powercap zones (Intel, and AMD Zen through the same `intel-rapl` driver).

Counted: every `package-*` zone plus `dram` zones (DRAM is outside the package). Not counted:
`core`/`uncore` (inside the package), `psys` (the platform: it already holds package and DRAM,
and on some laptops the discrete GPU, so adding it next to NVML would count twice) and
`intel-rapl-mmio:*` zones that repeat an MSR zone of the same name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .base import COUNTER, Component, Meter, Reading
from .sysfs import Sysfs

POWERCAP_DIRS = ("sys/class/powercap", "sys/devices/virtual/powercap")
ZONE_NAME = re.compile(r"^intel-rapl(?P<mmio>-mmio)?:(?P<top>\d+)(?::(?P<sub>\d+))?$")

PERMISSION_FIX = (
    "RAPL energy counters are readable by root only (Linux >= 5.10, CVE-2020-8694): {path}. "
    "Fix: run as root; or until reboot `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj`; "
    "or permanently with a udev rule, e.g. /etc/udev/rules.d/99-rapl.rules containing "
    '`ACTION=="add", SUBSYSTEM=="powercap", RUN+="/bin/chmod a+r /sys%p/energy_uj"`; '
    "in a container mount /sys/class/powercap read-only and grant CAP_DAC_READ_SEARCH."
)


@dataclass
class _Zone:
    path: Path
    label: str          # the zone's `name` file: package-0, dram, psys, core, ...
    component: str
    counted: bool
    max_range_uj: int | None
    last_uj: int | None = None
    total_uj: int = 0   # exact integer accumulator, wraps already unfolded


class RaplMeter(Meter):
    name = "rapl"
    covers = frozenset({"cpu"})

    def __init__(self, sysfs: Sysfs | None = None):
        super().__init__()
        self.sysfs = sysfs or Sysfs()
        self.zones = self._choose_zones(self._find_zone_dirs())
        if not self.zones:
            self.unavailable = "no intel-rapl zones under /sys/class/powercap (no RAPL driver, a VM, or not x86)"
            return
        try:
            self.read()  # sets each zone's baseline and proves the counters are readable
        except PermissionError as e:
            self.unavailable = PERMISSION_FIX.format(path=self.sysfs.shown(Path(e.filename or "")))
            self.permission_denied = True
            self.zones = []
            return
        self.components = [Component(z.component, COUNTER, z.counted) for z in self.zones]
        self.detail = ", ".join(f"{z.component} ({self.sysfs.shown(z.path)})" for z in self.zones)

    def _find_zone_dirs(self) -> dict[str, Path]:
        """Zone directories by zone name. /sys/class/powercap lists them flat (as links);
        /sys/devices/virtual/powercap nests sub-zones inside their package."""
        for base in POWERCAP_DIRS:
            found: dict[str, Path] = {}
            pending = [self.sysfs.path(base)]
            while pending:
                directory = pending.pop()
                try:
                    entries = sorted(os.scandir(directory), key=lambda e: e.name)
                except OSError:
                    continue
                for entry in entries:
                    if not entry.name.startswith("intel-rapl") or not entry.is_dir():
                        continue
                    if ZONE_NAME.match(entry.name):
                        found.setdefault(entry.name, Path(entry.path))
                    pending.append(Path(entry.path))
            if found:
                return found
        return {}

    def _choose_zones(self, dirs: dict[str, Path]) -> list[_Zone]:
        msr_labels = set()
        candidates = []
        for zone_name, path in sorted(dirs.items()):
            match = ZONE_NAME.match(zone_name)
            label = self.sysfs.read_optional(path / "name")
            if label is None or not (path / "energy_uj").exists():
                continue
            mmio = bool(match["mmio"])
            if not mmio:
                msr_labels.add(label)
            candidates.append((mmio, match["top"], match["sub"], label, path))

        has_package = any(label.startswith("package") for _, _, _, label, _ in candidates)
        zones = []
        for mmio, top, sub, label, path in candidates:
            if mmio and label in msr_labels:
                continue  # the same domain read through MMIO
            if label.startswith("package"):
                component, counted = label, True
            elif label == "dram":
                component, counted = f"dram-{top}", True
            elif label == "psys":
                component, counted = "psys", not has_package
            else:
                continue  # core / uncore live inside the package
            if any(z.component == component for z in zones):
                component = f"{component}-{zone_id(mmio, top, sub)}"
            max_range = self.sysfs.read_optional(path / "max_energy_range_uj")
            zones.append(_Zone(path, label, component, counted,
                               int(max_range) if max_range and max_range.isdigit() else None))
        # counted zones first so that the description reads naturally
        return sorted(zones, key=lambda z: not z.counted)

    def read(self) -> dict[str, Reading]:
        readings = {}
        for zone in self.zones:
            try:
                raw = self.sysfs.read_int(zone.path / "energy_uj")
            except PermissionError:
                raise
            except (OSError, ValueError) as e:
                readings[zone.component] = Reading(error=f"{self.sysfs.shown(zone.path / 'energy_uj')}: {e}")
                continue
            if zone.last_uj is not None:
                zone.total_uj += unwrap_delta(zone.last_uj, raw, zone.max_range_uj)
            zone.last_uj = raw
            readings[zone.component] = Reading(energy_j=zone.total_uj / 1e6)
        return readings


def unwrap_delta(last_uj: int, now_uj: int, max_range_uj: int | None) -> int:
    """Energy between two reads of a counter that wraps at `max_range_uj`.

    Correct when it wrapped at most once; the sampler reads every zone at 10 Hz, while the
    shortest wrap period seen (a 65 kJ counter at 280 W) is about four minutes.
    """
    if now_uj >= last_uj:
        return now_uj - last_uj
    if max_range_uj:
        return (max_range_uj - last_uj) + now_uj
    return now_uj  # no range published: assume the counter restarted from zero


def zone_id(mmio: bool, top: str, sub: str | None) -> str:
    return ("mmio" if mmio else "msr") + top + (f"-{sub}" if sub else "")
