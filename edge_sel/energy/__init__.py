"""Energy and temperature measurement: NVML, RAPL, Jetson rails, battery, or a labelled estimate.

    meter = open_meter()          # automatic choice; never raises for missing sensors
    meter.start()                 # one sampler thread
    meter.begin("train")
    fields = meter.end("train")   # energy_j, energy_source, energy_method, energy_coverage, ...
"""

from .base import COUNTER, ESTIMATED, INTEGRATED, EnergyWarning, Meter
from .choose import METER_NAMES, open_meter
from .estimate import DEFAULT_WATTS_PER_CORE
from .sampler import EnergyMeter
from .sysfs import ROOT_ENV, Sysfs
from .thermal import ThermalGuard

__all__ = [
    "COUNTER", "ESTIMATED", "INTEGRATED", "DEFAULT_WATTS_PER_CORE", "EnergyMeter",
    "EnergyWarning", "METER_NAMES", "Meter", "ROOT_ENV", "Sysfs", "ThermalGuard", "open_meter",
]
