"""What the training device and the installed torch can do, decided in one place so that paths this
machine never runs (Apple MPS, pre-Ampere CUDA, older torch on a Jetson, Windows, macOS) are chosen
by the same code that tests exercise with injected capabilities."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import torch


def supports_float64(device: torch.device) -> bool:
    return torch.device(device).type != "mps"       # MPS has no float64 kernels


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """Running sums kept on the training device: float64 where it exists, else float32."""
    return torch.float64 if supports_float64(device) else torch.float32


# What autocast runs each precision in (fp32: no autocast).
PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision type for CUDA: bf16 only with native support (compute capability 8.0,
    Ampere, or newer; older GPUs would emulate it slowly), else fp16 with loss scaling."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


# /proc/cpuinfo flags that mean bf16 arithmetic in hardware: AVX512-BF16 and AMX on x86, the
# BF16 extension (Armv8.6) on Arm. Without them oneDNN emulates bf16, more slowly than fp32.
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ("flags" on x86, "Features" on Arm), read below
    EDGE_SEL_SYSFS_ROOT like every other device file; empty where there is no such file."""
    path = Path(os.environ.get("EDGE_SEL_SYSFS_ROOT") or "/") / "proc" / "cpuinfo"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_native_bf16() -> bool:
    """bf16 autocast on this CPU runs on bf16 instructions (and this torch's oneDNN uses them)."""
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if not torch.backends.mkldnn.is_available() or mkldnn_bf16 is None or not mkldnn_bf16():
        return False
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def native_bf16(device: torch.device) -> bool:
    """bf16 is done in hardware on `device` (CUDA: compute capability 8.0 or newer)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return cpu_native_bf16()
    return False                    # MPS and others: fp32 unless asked for


def grad_scaler():
    """Loss scaling for fp16: torch.amp.GradScaler from torch 2.3, torch.cuda.amp's before."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def gpu_uuids(device: torch.device) -> list[str] | None:
    """NVML's UUID ("GPU-...") of a CUDA training device, so the energy meter reads that GPU
    only; None when not on CUDA or when this torch cannot tell (then every visible GPU is read)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is None:
        return None
    uuid = str(uuid)
    return [uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"]


PROC_STATUS = "/proc/self/status"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB. On Linux /proc's VmHWM (ru_maxrss keeps the peak
    of the process that started this one across exec: a benchmark's children all reported their
    parent's); ru_maxrss elsewhere (KiB on Linux, bytes on macOS); Windows has no `resource`
    module, psutil gives its peak working set."""
    try:
        with open(PROC_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
