"""`open_meter`: pick the meters this machine supports, without ever counting a part twice.

Automatic order: the Jetson rails on a Jetson (they hold CPU and GPU); otherwise NVML and
RAPL together (GPU + CPU); otherwise the battery while discharging (the whole laptop);
otherwise a labelled estimate. A measured meter is never mixed with the estimate
automatically.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from ..errors import InputError
from .base import Meter, warn
from .battery import BatteryMeter
from .estimate import PROCESS, EstimateMeter
from .jetson import JetsonMeter
from .nvml import NvmlMeter
from .rapl import RaplMeter
from .sampler import EnergyMeter
from .sysfs import Sysfs
from .temps import TemperatureSensors

METER_CLASSES: dict[str, type[Meter]] = {
    "nvml": NvmlMeter,
    "rapl": RaplMeter,
    "jetson": JetsonMeter,
    "battery": BatteryMeter,
    "estimate": EstimateMeter,
}
METER_NAMES = tuple(METER_CLASSES)  # also the order of names in energy_source ("nvml+rapl")


def open_meter(prefer: list[str] | None = None, root: str | os.PathLike | None = None,
               watts_per_core: float | None = None, rails: list[str] | None = None,
               interval_s: float = 0.1, *, nvml: Any = None, gpu_uuids: list[str] | None = None,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep,
               cpu_seconds: Callable[[], float] | None = None, cores: Callable[[], int] | None = None,
               estimate_scope: str = PROCESS) -> EnergyMeter:
    """Open the best available meters (or those named in `prefer`, in that order).

    Never raises for missing or unreadable sensors: what was skipped, and why, is in
    `describe()["skipped"]`. Raises InputError for an unknown meter name.
    `estimate_scope` is what the estimate charges: this process (a run) or the whole machine
    (`monitor`). `nvml`, `clock`, `sleep`, `cpu_seconds` and `cores` exist for tests.
    """
    unknown = [name for name in (prefer or []) if name not in METER_CLASSES]
    if unknown:
        raise InputError(f"unknown energy meter {unknown[0]!r}; choose from {', '.join(METER_NAMES)}")
    if watts_per_core is not None and not watts_per_core > 0:
        raise InputError(f"watts_per_core must be positive, got {watts_per_core}")
    if not interval_s > 0:
        raise InputError(f"the energy sampling interval must be positive, got {interval_s}")
    sysfs = Sysfs(root)
    builders: dict[str, Callable[[], Meter]] = {
        "nvml": lambda: NvmlMeter(nvml=nvml, gpu_uuids=gpu_uuids),
        "rapl": lambda: RaplMeter(sysfs),
        "jetson": lambda: JetsonMeter(sysfs, rails=rails),
        "battery": lambda: BatteryMeter(sysfs),
        "estimate": lambda: EstimateMeter(watts_per_core, cpu_seconds=cpu_seconds, cores=cores,
                                          scope=estimate_scope, clock=clock),
    }
    chosen: list[Meter] = []
    skipped: dict[str, str] = {}

    def try_meter(name: str) -> bool:
        overlap = [m.name for m in chosen if m.covers & METER_CLASSES[name].covers]
        if overlap:
            skipped[name] = f"not used: it would count again what {'+'.join(overlap)} already measures"
            return False
        try:
            meter = builders[name]()
        except Exception as e:  # a broken sensor must never stop a training run
            skipped[name] = f"failed to open: {e!r}"
            warn(f"energy meter {name} {skipped[name]}")
            return False
        if not meter.available:
            skipped[name] = meter.unavailable or "no usable sensor"
            if meter.permission_denied:
                warn(skipped[name])  # actionable: the message says how to fix it
            meter.close()
            return False
        chosen.append(meter)
        return True

    if prefer:
        for name in dict.fromkeys(prefer):
            try_meter(name)
        if not chosen and "estimate" not in prefer:
            warn(f"none of the requested energy meters ({', '.join(prefer)}) is available: "
                 + "; ".join(f"{n}: {r}" for n, r in skipped.items()) + ". Falling back to the estimate.")
            try_meter("estimate")
    elif try_meter("jetson"):
        for name in ("nvml", "rapl", "battery", "estimate"):
            skipped[name] = "not needed: the Jetson rails measure the whole module"
    else:
        try_meter("nvml")
        try_meter("rapl")
        if chosen:
            skipped["battery"] = (f"not probed: {'+'.join(m.name for m in chosen)} already measures this "
                                  "machine; the battery would count it twice")
            skipped["estimate"] = "not needed: a sensor is available"
        elif try_meter("battery"):
            skipped["estimate"] = "not needed: the battery is discharging"
        else:
            try_meter("estimate")

    chosen.sort(key=lambda m: METER_NAMES.index(m.name))
    return EnergyMeter(chosen, TemperatureSensors(sysfs), interval_s=interval_s, clock=clock,
                       sleep=sleep, skipped=skipped, sysfs_root=str(sysfs.root))
