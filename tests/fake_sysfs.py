"""Builders of fake sensor trees in the real sysfs file formats, plus a fake clock and a fake
NVML module, for tests of the energy layer (and of anything that runs with a meter).

Sysfs attributes are decimal integers or words followed by a newline, with no units:
RAPL energy in uJ, INA3221 hwmon mV and mA, JetPack 4 iio mW, INA238 power in uW, battery
uW/uA/uV, thermal zones in milli-degrees C.
"""

from __future__ import annotations

from pathlib import Path

RAPL_MAX_RANGE_UJ = 262143328850  # a real max_energy_range_uj (2^32 x 61.04 uJ)


def write(root: Path, rel: str, value) -> Path:
    path = Path(root) / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    return path


# ---- RAPL ---------------------------------------------------------------------------------

def rapl_zone(root: Path, zone: str, name: str, energy_uj: int,
              max_range_uj: int = RAPL_MAX_RANGE_UJ) -> Path:
    """A zone as listed flat in /sys/class/powercap (zone = "intel-rapl:0", "intel-rapl:0:2",
    "intel-rapl-mmio:0"). Returns the energy_uj file."""
    base = f"sys/class/powercap/{zone}"
    write(root, f"{base}/name", name)
    write(root, f"{base}/max_energy_range_uj", max_range_uj)
    write(root, f"{base}/enabled", 1)
    return write(root, f"{base}/energy_uj", energy_uj)


def intel_laptop_rapl(root: Path) -> dict[str, Path]:
    """psys + package (with core, uncore, dram sub-zones) + the MMIO duplicate of the package."""
    return {
        "package-0": rapl_zone(root, "intel-rapl:0", "package-0", 10_000_000),
        "core": rapl_zone(root, "intel-rapl:0:0", "core", 5_000_000),
        "uncore": rapl_zone(root, "intel-rapl:0:1", "uncore", 1_000_000),
        "dram": rapl_zone(root, "intel-rapl:0:2", "dram", 2_000_000),
        "psys": rapl_zone(root, "intel-rapl:1", "psys", 30_000_000),
        "mmio": rapl_zone(root, "intel-rapl-mmio:0", "package-0", 10_000_000),
    }


# ---- Jetson -------------------------------------------------------------------------------

def ina3221_hwmon(root: Path, device: str, hwmon: str, rails: list[tuple[str, int, int]],
                  sum_channel: bool = True) -> dict[str, tuple[Path, Path]]:
    """JetPack 5/6 mainline driver. rails: (label, mV, mA) for channels 1..3; label "NC" for
    an unconnected channel. Returns {label: (in_input, curr_input)}."""
    base = f"sys/bus/i2c/drivers/ina3221/{device}/hwmon/{hwmon}"
    write(root, f"{base}/name", "ina3221")
    files = {}
    for channel, (label, millivolts, milliamps) in enumerate(rails, start=1):
        write(root, f"{base}/in{channel}_label", label)
        volts = write(root, f"{base}/in{channel}_input", millivolts)
        amps = write(root, f"{base}/curr{channel}_input", milliamps)
        write(root, f"{base}/in{channel + 3}_input", 12345)  # shunt voltage, uV
        write(root, f"{base}/curr{channel}_max", 10000)
        files[label] = (volts, amps)
    if sum_channel:
        write(root, f"{base}/in7_label", "sum of shunt voltages")
        write(root, f"{base}/in7_input", 40000)
        write(root, f"{base}/curr4_input", 1000)
    write(root, f"{base}/samples", 512)
    write(root, f"{base}/update_interval", 1000)
    return files


def ina3221_iio(root: Path, device: str, rails: list[tuple[str, int]]) -> dict[str, Path]:
    """JetPack 4 NVIDIA driver. rails: (rail_name, mW). Returns {name: in_power file}."""
    base = f"sys/bus/i2c/drivers/ina3221x/{device}/iio:device0"
    files = {}
    for channel, (name, milliwatts) in enumerate(rails):
        write(root, f"{base}/rail_name_{channel}", name)
        files[name] = write(root, f"{base}/in_power{channel}_input", milliwatts)
        write(root, f"{base}/in_voltage{channel}_input", 5000)
        write(root, f"{base}/in_current{channel}_input", milliwatts * 1000 // 5000)
    return files


def ina238_hwmon(root: Path, device: str, hwmon: str, microwatts: int) -> Path:
    """AGX Thor carrier input monitor (power1_input in uW, no labels)."""
    base = f"sys/bus/i2c/drivers/ina238/{device}/hwmon/{hwmon}"
    write(root, f"{base}/name", "ina238")
    write(root, f"{base}/in1_input", 19000)
    write(root, f"{base}/curr1_input", microwatts // 19000)
    return write(root, f"{base}/power1_input", microwatts)


def thermal_zone(root: Path, index: int, kind: str, millicelsius: int) -> Path:
    write(root, f"sys/class/thermal/thermal_zone{index}/type", kind)
    return write(root, f"sys/class/thermal/thermal_zone{index}/temp", millicelsius)


def orin_nano(root: Path) -> dict[str, tuple[Path, Path]]:
    """Orin Nano on JetPack 6: VDD_IN 5 V x 1.4 A = 7 W; thermal zones with an offline GPU."""
    rails = ina3221_hwmon(root, "1-0040", "hwmon1", [
        ("VDD_IN", 5000, 1400),
        ("VDD_CPU_GPU_CV", 5000, 400),
        ("VDD_SOC", 5000, 300),
    ])
    thermal_zone(root, 0, "cpu-thermal", 45500)
    thermal_zone(root, 1, "gpu-thermal", -256000)  # rail-gated GPU
    thermal_zone(root, 2, "soc0-thermal", 44000)
    thermal_zone(root, 3, "tj-thermal", 46250)
    return rails


def agx_orin(root: Path) -> dict[str, tuple[Path, Path]]:
    """AGX Orin: no VDD_IN; two monitors, the second with NC channels."""
    rails = ina3221_hwmon(root, "1-0040", "hwmon1", [
        ("VDD_GPU_SOC", 5000, 1000),
        ("VDD_CPU_CV", 5000, 600),
        ("VIN_SYS_5V0", 5000, 400),
    ])
    rails.update(ina3221_hwmon(root, "1-0041", "hwmon2", [
        ("NC", 0, 0),
        ("VDDQ_VDD2_1V8AO", 1800, 500),
        ("NC", 0, 0),
    ], sum_channel=False))
    return rails


# ---- battery ------------------------------------------------------------------------------

def battery(root: Path, name: str, status: str, power_uw: int | None = None,
            current_ua: int | None = None, voltage_uv: int | None = None) -> Path:
    base = f"sys/class/power_supply/{name}"
    write(root, f"{base}/type", "Battery")
    write(root, f"{base}/status", status)
    write(root, f"{base}/present", 1)
    write(root, f"{base}/capacity", 80)
    if power_uw is not None:
        write(root, f"{base}/power_now", power_uw)
    if current_ua is not None:
        write(root, f"{base}/current_now", current_ua)
    if voltage_uv is not None:
        write(root, f"{base}/voltage_now", voltage_uv)
    return Path(root) / base


def mains(root: Path, name: str = "AC", online: bool = False) -> Path:
    write(root, f"sys/class/power_supply/{name}/type", "Mains")
    return write(root, f"sys/class/power_supply/{name}/online", int(online))


# ---- time ---------------------------------------------------------------------------------

class FakeClock:
    """A clock that moves only when told; `sleep` advances it (and runs `on_sleep`)."""

    def __init__(self, t: float = 0.0):
        self.t = t
        self.on_sleep = None

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        if self.on_sleep:
            self.on_sleep(self.t)


# ---- NVML ---------------------------------------------------------------------------------

class FakeNVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 12: "NVML Shared Library Not Found",
                13: "Function Not Found", 26: "Deprecated"}.get(self.value, f"NVML error {self.value}")


class FakeGpu:
    """Scripted answers for one device. A value of None means the call raises NotSupported;
    a callable is called for each read; an int code in `errors` raises that code."""

    def __init__(self, name="Fake GPU", energy_mj=None, power_mw=None, temp_c=None,
                 event_reasons=None, errors=None, uuid=None, pids=()):
        self.name = name
        self.uuid = uuid or f"GPU-{abs(hash((name, id(self)))) % 10**12:012d}-fake"
        self.energy_mj = energy_mj
        self.power_mw = power_mw
        self.temp_c = temp_c
        self.event_reasons = event_reasons
        self.errors = dict(errors or {})
        self.pids = pids        # the compute processes on the card (a list, or a callable giving one)


class FakeProcess:
    """What nvmlDeviceGetComputeRunningProcesses lists: a pid and the GPU memory it holds."""

    def __init__(self, pid: int, used_gpu_memory: int = 2**30):
        self.pid = pid
        self.usedGpuMemory = used_gpu_memory


class FakeNvml:
    """Stands in for the `pynvml` module. Constants equal the real ones (a test checks)."""

    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_DEPRECATED = 26
    NVML_TEMPERATURE_GPU = 0
    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: int | None = None):
        self.gpus = gpus or []
        self.init_error = init_error
        self.calls: list[str] = []
        self.initialised = False

    def _answer(self, fn: str, gpu: FakeGpu, value):
        self.calls.append(fn)
        if fn in gpu.errors:
            raise FakeNVMLError(gpu.errors[fn])
        if value is None:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return value() if callable(value) else value

    def nvmlInit(self):
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self):
        self.initialised = False

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, gpu):
        return gpu.uuid

    def nvmlDeviceGetName(self, gpu):
        return gpu.name

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu):
        return self._answer("nvmlDeviceGetTotalEnergyConsumption", gpu, gpu.energy_mj)

    def nvmlDeviceGetPowerUsage(self, gpu):
        return self._answer("nvmlDeviceGetPowerUsage", gpu, gpu.power_mw)

    def nvmlDeviceGetTemperatureV(self, gpu, sensor):
        return self._answer("nvmlDeviceGetTemperatureV", gpu, gpu.temp_c)

    def nvmlDeviceGetTemperature(self, gpu, sensor):
        return self._answer("nvmlDeviceGetTemperature", gpu, gpu.temp_c)

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu):
        return self._answer("nvmlDeviceGetCurrentClocksEventReasons", gpu, gpu.event_reasons)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu):
        pids = self._answer("nvmlDeviceGetComputeRunningProcesses", gpu, gpu.pids)
        return [FakeProcess(pid) for pid in pids]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, gpu):
        return self._answer("nvmlDeviceGetCurrentClocksThrottleReasons", gpu, gpu.event_reasons)


def orin_nvml() -> FakeNvml:
    """Jetson Orin: init succeeds, one device, everything answers NotSupported."""
    return FakeNvml([FakeGpu(name="Orin")])
