"""What the training device and the installed torch can do, decided in one place so that paths this
machine never runs (Apple MPS, pre-Ampere CUDA, older torch on a Jetson, Windows, macOS) are chosen
by the same code that tests exercise with injected capabilities."""

from __future__ import annotations

import sys

import psutil
import torch


def supports_float64(device: torch.device) -> bool:
    return torch.device(device).type != "mps"       # MPS has no float64 kernels


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """Running sums kept on the training device: float64 where it exists, else float32."""
    return torch.float64 if supports_float64(device) else torch.float32


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision type for CUDA: bf16 only with native support (compute capability 8.0,
    Ampere, or newer; older GPUs would emulate it slowly), else fp16 with loss scaling."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


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


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB. ru_maxrss is KiB on Linux and bytes on macOS;
    Windows has no `resource` module, psutil gives its peak working set."""
    try:
        import resource
    except ImportError:
        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
