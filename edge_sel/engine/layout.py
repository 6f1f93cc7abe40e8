"""Memory layout and evaluation batch size, chosen per device by a short measurement.

Convolutions on CPU (oneDNN) and on CUDA (cuDNN, tensor cores) often run faster with activations
in channels_last (NHWC) order, but not always: it depends on the model, the batch and the kernels
this torch build has. So "auto" times a few training steps in both layouts on a throwaway copy of
the model and keeps the faster one, and then times inference at a few batch sizes in that layout.
The timings go into the run's records; nothing is chosen silently.
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from edge_sel.core.checkpoint import atomic_write_bytes
from edge_sel.core.flops import FlopCounter
from edge_sel.data.folder import cache_dir

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
EVAL_BATCH_CANDIDATES = (128, 256, 512, 1024)
PROBE_STEPS = 3        # timed steps per layout, after one untimed warm-up step
PROBE_BYTES = 64 * 2**20   # largest probe input batch: the measurement must not crowd a small device
# channels_last must win clearly: near a tie, timing noise would flip the choice from run to run
# (and with it the float rounding of otherwise identical seeded runs).
MARGIN = 0.9
CACHE_FILE = "layout.json"


@dataclass
class LayoutChoice:
    memory_format: str                   # "channels_last" or "contiguous"
    eval_batch_size: int
    source: str                          # "measured", "measured earlier", "given" or "no convolutions"
    train_s_per_step: dict = field(default_factory=dict)     # layout -> median seconds
    eval_images_per_s: dict = field(default_factory=dict)    # batch size -> images/s
    probe_wall_s: float = 0.0
    probe_flops: int = 0                 # compute the measurement itself ran (outside every epoch)

    @property
    def format(self) -> torch.memory_format:
        return FORMATS[self.memory_format]

    def to_json(self) -> dict:
        d = asdict(self)
        d["eval_images_per_s"] = {str(k): v for k, v in self.eval_images_per_s.items()}
        return d


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_layout(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """A 4-D batch in `fmt` (other ranks are returned as they are)."""
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fmt, steps: int) -> float:
    model = model.to(memory_format=fmt).train()
    x = to_layout(x, fmt)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(x.device)
        if i:                            # the first step pays one-off kernel selection
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def _eval_rate(model: nn.Module, x: torch.Tensor, batch_size: int, autocast) -> float:
    model.eval()
    xb = x[:batch_size]
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        with autocast():
            model(xb)
        _sync(x.device)
        if i:
            times.append(time.perf_counter() - t0)
    return len(xb) / statistics.median(times)


def choose_layout(model: nn.Module, input_shape: tuple, num_classes: int, device: torch.device,
                  batch_size: int, memory_format: str = "auto", eval_batch_size: int = 0,
                  max_eval_batch: int | None = None, autocast=None) -> LayoutChoice:
    """Measure (on a copy: the model's weights and BatchNorm statistics stay untouched) what
    `memory_format="auto"` and `eval_batch_size=0` leave open; values given are kept as given."""
    autocast = autocast or contextlib.nullcontext
    conv = has_conv(model)
    if not conv:
        fmt = "contiguous"
        source = "no convolutions"
    else:
        fmt = memory_format
        source = "given" if memory_format != "auto" else "measured"
    if fmt != "auto" and eval_batch_size:
        return LayoutChoice(fmt, eval_batch_size, source)

    per_image = 4 * int(torch.tensor(input_shape).prod())
    fits = [b for b in EVAL_BATCH_CANDIDATES if b * per_image <= PROBE_BYTES] or [EVAL_BATCH_CANDIDATES[0]]
    cap = max_eval_batch or max(fits)
    candidates = [b for b in fits if b <= cap] or [max(1, cap)]
    key = "|".join(map(str, (type(model).__name__, sum(p.numel() for p in model.parameters()), tuple(input_shape),
                             device_name(device), batch_size, fmt, eval_batch_size, candidates, torch.__version__)))
    cached = cache_entry(CACHE_FILE, key)
    if cached is not None:                # measured once per device and configuration, then kept
        return LayoutChoice(cached["memory_format"], cached["eval_batch_size"], "measured earlier",
                            cached["train_s_per_step"], {int(k): v for k, v in cached["eval_images_per_s"].items()})
    t0 = time.perf_counter()
    probe = copy.deepcopy(model).to(device)
    counter = FlopCounter(model, input_shape)
    gen = torch.Generator().manual_seed(0)     # leaves the run's random streams alone
    biggest = max(candidates)
    batch_size = max(batch_size, 2)            # BatchNorm cannot train on one sample
    x = torch.randn(max(batch_size, biggest), *input_shape, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    timings: dict = {}
    flops = 0
    if fmt == "auto":
        for name in ("contiguous", "channels_last"):
            with autocast():
                timings[name] = _time_train_step(probe, x[:batch_size], y, FORMATS[name], PROBE_STEPS)
            f, b = counter.train_step(batch_size)
            flops += (PROBE_STEPS + 1) * (f + b)
        fmt = "channels_last" if timings["channels_last"] < MARGIN * timings["contiguous"] else "contiguous"
    rates: dict = {}
    chosen_eval = eval_batch_size
    if not chosen_eval:
        probe = probe.to(memory_format=FORMATS[fmt])
        xf = to_layout(x, FORMATS[fmt])
        for b in candidates:
            rates[b] = _eval_rate(probe, xf, b, autocast)
            flops += 3 * counter.eval_batch(min(b, len(xf)))
        chosen_eval = max(rates, key=rates.get)
    choice = LayoutChoice(fmt, chosen_eval, source, timings, rates, time.perf_counter() - t0, flops)
    keep_in_cache(CACHE_FILE, key, choice.to_json())
    return choice


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.machine()}:{platform.processor()}:{torch.get_num_threads()} threads"


def _cache_path(name: str) -> Path:
    return cache_dir() / name


def _read_cache(name: str) -> dict:
    try:
        return json.loads(_cache_path(name).read_text())
    except (OSError, ValueError):
        return {}                          # none yet, or unreadable: measure again


def cache_entry(name: str, key: str) -> dict | None:
    """What was measured earlier for `key` in the cache file `name`, if anything."""
    return _read_cache(name).get(key)


def keep_in_cache(name: str, key: str, entry: dict) -> dict:
    """Keeps `entry` for `key` and returns it; an entry another process kept meanwhile wins, so
    that runs started together on one device go on with one choice."""
    entries = _read_cache(name)
    if key in entries:
        return entries[key]
    entries[key] = entry
    path = _cache_path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(entries, indent=1).encode())
    except OSError as e:                   # a read-only home must not stop a run
        warnings.warn(f"could not keep the measurement in {path}: {e}")
    return entry
