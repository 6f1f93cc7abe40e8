"""`--profile auto`: which shipped profile fits this machine, and why.

Order, first match wins:
1. a Jetson (device-tree model, compatible string, or /etc/nv_tegra_release), mapped by model;
2. a Raspberry Pi 5 (device-tree model);
3. a laptop: a system battery in /sys/class/power_supply (a laptop with a discrete GPU still
   gets `laptop-cpu`: the battery is its only whole-machine meter);
4. a CUDA desktop: torch sees a CUDA device, or NVML counts a GPU;
5. anything else: `generic` (every choice automatic, no thermal guard).

Files are read below EDGE_SEL_SYSFS_ROOT (default /), like the energy meters, so a dump of a
real board, or a fake tree in a test, is detected the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from edge_sel.energy.sysfs import Sysfs

# Lower-case substrings of /proc/device-tree/model, most specific first ("Jetson Orin Nano"
# must not fall through to "jetson nano").
JETSON_MODELS = (
    ("orin nano", "jetson-orin-nano"),
    ("orin nx", "jetson-orin-nano"),       # same module family (P3767) and VDD_IN input rail
    ("agx orin", "jetson-agx-orin"),
    ("jetson nano", "jetson-nano"),
)
# Module part numbers in /proc/device-tree/compatible, for boards with a custom model string.
JETSON_MODULES = (
    ("p3767", "jetson-orin-nano"),        # Orin Nano / Orin NX modules
    ("p3701", "jetson-agx-orin"),
    ("p3448", "jetson-nano"),
)
FALLBACK = "generic"


@dataclass(frozen=True)
class Detection:
    name: str      # a shipped profile
    reason: str    # what was seen, for the run record and `edge-sel profiles detect`


def _read(sysfs: Sysfs, rel: str) -> str | None:
    """Device-tree strings end in NUL bytes (compatible is a NUL-separated list)."""
    try:
        raw = sysfs.path(rel).read_bytes()
    except OSError:
        return None
    return raw.replace(b"\x00", b" ").decode("ascii", errors="replace").strip()


def gpu_probe(torch_cuda: Callable[[], bool] | None = None, nvml: Any = None) -> str | None:
    """A description of the CUDA GPUs this machine has, or None. NVML counts a GPU even when the
    installed torch is a CPU build (the run then says so when it asks for device cuda)."""
    if torch_cuda is None:
        def torch_cuda():
            import torch
            return torch.cuda.is_available()
    if torch_cuda():
        return "torch sees a CUDA device"
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        try:
            count = nvml.nvmlDeviceGetCount()
        finally:
            nvml.nvmlShutdown()
    except Exception:  # no driver, no library: no GPU to use
        return None
    return f"NVML counts {count} GPU(s)" if count > 0 else None


def _system_battery(sysfs: Sysfs) -> str | None:
    for directory in sysfs.glob("sys/class/power_supply/*"):
        kind = sysfs.read_optional(directory / "type")
        scope = sysfs.read_optional(directory / "scope")
        if kind == "Battery" and scope != "Device":   # "Device": a mouse or headset battery
            return directory.name
    return None


def detect(root: str | os.PathLike | None = None,
           cuda_probe: Callable[[], str | None] = gpu_probe) -> Detection:
    sysfs = Sysfs(root)
    model = _read(sysfs, "proc/device-tree/model") or ""
    compatible = _read(sysfs, "proc/device-tree/compatible") or ""
    tegra_release = _read(sysfs, "etc/nv_tegra_release")
    lower = model.lower()

    if "jetson" in lower or "nvidia,tegra" in compatible or tegra_release is not None:
        seen = f"device-tree model {model!r}" if model else f"L4T {tegra_release!r}"
        for needle, name in JETSON_MODELS:
            if needle in lower:
                return Detection(name, f"Jetson: {seen}")
        for needle, name in JETSON_MODULES:
            if needle in compatible:
                return Detection(name, f"Jetson module {needle} in device-tree compatible ({seen})")
        return Detection(FALLBACK, f"Jetson without a shipped profile ({seen}); rails chosen automatically")
    if lower.startswith("raspberry pi 5"):
        return Detection("raspberry-pi-5", f"device-tree model {model!r}")
    battery = _system_battery(sysfs)
    if battery:
        return Detection("laptop-cpu", f"battery /sys/class/power_supply/{battery}")
    gpus = cuda_probe()
    if gpus:
        return Detection("desktop-gpu", gpus)
    return Detection(FALLBACK, "no Jetson, Raspberry Pi 5, battery or CUDA GPU found")
