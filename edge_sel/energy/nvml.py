"""NVIDIA GPU energy through NVML (`nvidia-ml-py`, imported as `pynvml`).

Per GPU: the total-energy counter (mJ, Volta and newer) where the driver supports it,
otherwise power samples (mW) that the sampler integrates. Support is probed by calling the
functions once, not by trusting the architecture: pre-Volta and many virtualised GPUs answer
NotSupported for the counter, and Jetson/Tegra answers NotSupported for everything, in which
case this meter is unavailable and the next one is tried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .base import COUNTER, INTEGRATED, Component, Meter, Reading

# Every pynvml function and constant this module touches; a contract test checks each name
# against the installed nvidia-ml-py and that nothing else is used.
NVML_NAMES = (
    "NVMLError",
    "NVML_TEMPERATURE_GPU",
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetComputeRunningProcesses",
)

# Clock-event bits that mean the clocks were held down by power or heat (NVML
# nvmlClocksEventReason*; the values are fixed by the NVML ABI and checked by a test).
# Idle, application clocks, sync boost and display clocks are not throttling.
THROTTLE_BITS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
}


def _load_pynvml() -> Any:
    import pynvml

    return pynvml


@dataclass
class _Gpu:
    index: int
    handle: Any
    component: str
    has_counter: bool
    has_power: bool
    first_mj: int | None = None
    temperature: Callable[[Any], float] | None = None
    clock_events: Callable[[Any], int] | None = None


class NvmlMeter(Meter):
    name = "nvml"
    covers = frozenset({"gpu"})

    def __init__(self, nvml: Any = None, gpu_uuids: list[str] | None = None):
        """`gpu_uuids`: measure only these GPUs (the ones the run trains on); None: every GPU
        visible to this process."""
        super().__init__()
        self.gpus: list[_Gpu] = []
        self._initialised = False
        self._trains_here = gpu_uuids is not None     # the run computes on these GPUs
        try:
            self.nvml = nvml if nvml is not None else _load_pynvml()
        except ImportError:
            self.unavailable = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as e:
            # LibraryNotFound / DriverNotLoaded: no NVIDIA GPU or driver on this machine.
            self.unavailable = f"NVML unavailable: {e}"
            return
        self._initialised = True
        try:
            visible = visible_gpu_indices(self.nvml.nvmlDeviceGetCount())
            if gpu_uuids is not None:
                visible = self._matching(visible, gpu_uuids)
            probed = (self._probe(i) for i in visible)
            self.gpus = [gpu for gpu in probed if gpu is not None]
        except self.nvml.NVMLError as e:
            self.unavailable = f"NVML failed while listing GPUs: {e}"
        else:
            if not visible:
                self.unavailable = "no NVIDIA GPU visible to this process (see CUDA_VISIBLE_DEVICES)"
            elif not self.gpus:
                self.unavailable = (
                    f"NVML answers NotSupported for energy and power on all {len(visible)} device(s) "
                    "(Jetson/Tegra: use the jetson meter)"
                )
        if self.unavailable:
            self.gpus = []
            self.close()
            return
        self.components = [
            Component(g.component, COUNTER if g.has_counter else INTEGRATED) for g in self.gpus
        ]
        self.detail = ", ".join(
            f"{g.component} {self._gpu_name(g)} ({'energy counter' if g.has_counter else 'power samples'})"
            for g in self.gpus
        )

    def _matching(self, indices: list[int], uuids: list[str]) -> list[int]:
        """The NVML indices whose UUID is one of `uuids`: NVML numbers GPUs by PCI bus while CUDA
        numbers them fastest first, so an ordinal alone could name another job's GPU."""
        wanted = {u.lower() for u in uuids}
        found = []
        for index in indices:
            uuid = self.nvml.nvmlDeviceGetUUID(self.nvml.nvmlDeviceGetHandleByIndex(index))
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            if uuid.lower() in wanted:
                found.append(index)
        return found

    def _probe(self, index: int) -> _Gpu | None:
        try:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        except self.nvml.NVMLError:
            return None  # e.g. a GPU that fell off the bus
        gpu = _Gpu(index, handle, f"gpu{index}", has_counter=False, has_power=False)
        try:
            gpu.first_mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            gpu.has_counter = True
        except self.nvml.NVMLError:
            pass
        try:
            self.nvml.nvmlDeviceGetPowerUsage(handle)
            gpu.has_power = True
        except self.nvml.NVMLError:
            pass
        if not (gpu.has_counter or gpu.has_power):
            return None
        gpu.temperature = self._first_working(
            handle,
            lambda h: self.nvml.nvmlDeviceGetTemperatureV(h, self.nvml.NVML_TEMPERATURE_GPU),
            lambda h: self.nvml.nvmlDeviceGetTemperature(h, self.nvml.NVML_TEMPERATURE_GPU),
        )
        gpu.clock_events = self._first_working(
            handle,
            lambda h: self.nvml.nvmlDeviceGetCurrentClocksEventReasons(h),
            lambda h: self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h),
        )
        return gpu

    def _first_working(self, handle: Any, new: Callable, old: Callable) -> Callable | None:
        """The new API name first; the deprecated one where the driver or binding lacks it.

        Older bindings miss the new function (AttributeError); older drivers miss the symbol
        (FUNCTION_NOT_FOUND); CUDA 14-era drivers drop the old one (DEPRECATED)."""
        for call in (new, old):
            try:
                call(handle)
                return call
            except (self.nvml.NVMLError, AttributeError):
                continue
        return None

    def _gpu_name(self, gpu: _Gpu) -> str:
        try:
            name = self.nvml.nvmlDeviceGetName(gpu.handle)
        except self.nvml.NVMLError:
            return "?"
        return name.decode() if isinstance(name, bytes) else str(name)

    def read(self) -> dict[str, Reading]:
        readings = {}
        for gpu in self.gpus:
            reading = Reading()
            try:
                if gpu.has_counter:
                    mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)
                    reading.energy_j = (mj - gpu.first_mj) / 1e3
            except self.nvml.NVMLError as e:
                reading.error = f"{gpu.component}: NVML {e}"
            if gpu.has_power and reading.error is None:
                try:
                    reading.power_w = self.nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1e3
                except self.nvml.NVMLError as e:
                    if not gpu.has_counter:  # with a counter, power is only for display
                        reading.error = f"{gpu.component}: NVML {e}"
            readings[gpu.component] = reading
        return readings

    def temperatures(self) -> dict[str, float]:
        temps = {}
        for gpu in self.gpus:
            if gpu.temperature is None:
                continue
            try:
                temps[gpu.component] = float(gpu.temperature(gpu.handle))
            except self.nvml.NVMLError:
                continue
        return temps

    def throttle_reasons(self) -> list[str]:
        reasons = []
        for gpu in self.gpus:
            if gpu.clock_events is None:
                continue
            try:
                mask = int(gpu.clock_events(gpu.handle))
            except self.nvml.NVMLError:
                continue
            reasons += [f"{gpu.component}:{name}" for bit, name in THROTTLE_BITS.items() if mask & bit]
        return reasons

    counts_processes = True

    def processes(self) -> tuple[int, int] | None:
        """(others, all): the compute processes on the metered GPUs other than this one, and all of
        them. NVML's counter is the whole card's, so a window with others in it holds their joules
        too. A run on these GPUs that does not find its own pid in the list (a PID namespace numbers it
        otherwise) counts one of the listed as its own. None: NVML cannot list them here, or lists
        none while the run computes on the GPU (a sandbox that hides processes)."""
        listed: set[int] = set()
        for gpu in self.gpus:
            try:
                listed.update(int(p.pid) for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(gpu.handle))
            except self.nvml.NVMLError:
                return None
        own = os.getpid()
        if self._trains_here and not listed:
            return None     # NVML sees no process, this run's own neither: it cannot say who else is there
        if own in listed or not self._trains_here:
            others = len(listed - {own})
        else:
            others = max(len(listed) - 1, 0)
        return others, len(listed)

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass


def visible_gpu_indices(count: int) -> list[int]:
    """NVML indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES), so that idle
    GPUs belonging to other jobs are not charged to this run. UUID lists measure all GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    indices = []
    for item in visible.split(","):
        try:
            index = int(item)
        except ValueError:
            if not item.strip():
                break
            return list(range(count))  # GPU UUIDs or MIG names
        if index < 0:
            break  # CUDA ignores everything from the first invalid index on
        indices.append(index)
    return [i for i in indices if i < count]
