"""Memory layout and evaluation batch size, chosen per device by a short measurement.

Convolutions on CPU (oneDNN) and on CUDA (cuDNN, tensor cores) often run faster with activations
in channels_last (NHWC) order, but not always: it depends on the model, the batch and the kernels
this torch build has. So "auto" times a few training steps in both layouts on a throwaway copy of
the model and keeps the faster one, and then times inference at a few batch sizes in that layout.
The timings go into the run's records; nothing is chosen silently. What is kept for later runs,
and when it is measured again, is engine/machine/probe_cache.py's.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.engine.machine import probe_cache
from edge_sel.engine.machine.device import random_streams_kept

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
EVAL_BATCH_CANDIDATES = (128, 256, 512, 1024)
PROBE_STEPS = 5        # timed steps per layout, the layouts taking turns, after one untimed warm-up each
EVAL_ROUNDS = 3        # timed passes per evaluation batch size, the sizes taking turns, after one untimed each
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
    other_load_cpus: float | None = None     # CPUs other work kept busy while it was measured
    provisional: bool = False            # measured under load: a quiet start measures again
    cache_key: str = ""

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


def _time_train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    """Median seconds of a training step in each layout, the layouts taking turns step by step so
    that a burst of other work falls on both alike."""
    times: dict = {name: [] for name in FORMATS}
    for i in range(steps + 1):
        for name, fmt in FORMATS.items():
            model.to(memory_format=fmt).train()
            xf = to_layout(x, fmt)
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(xf).float(), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
            _sync(x.device)
            if i:                            # the first step pays one-off kernel selection
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def _eval_rates(model: nn.Module, x: torch.Tensor, candidates: list, autocast, rounds: int = EVAL_ROUNDS) -> dict:
    """Images/s of an evaluation batch at each candidate size: the median of `rounds` timed passes,
    the sizes taking turns, after one untimed pass each."""
    model.eval()
    times: dict = {b: [] for b in candidates}
    for i in range(rounds + 1):
        for b in candidates:
            t0 = time.perf_counter()
            with autocast():
                model(x[:b])
            _sync(x.device)
            if i:
                times[b].append(time.perf_counter() - t0)
    return {b: min(b, len(x)) / statistics.median(t) for b, t in times.items()}


def choose_layout(model: nn.Module, input_shape: tuple, num_classes: int, device: torch.device,
                  batch_size: int, memory_format: str = "auto", eval_batch_size: int = 0,
                  max_eval_batch: int | None = None, autocast=None, trains: str = "dense",
                  load_now=None) -> LayoutChoice:
    """Measure (on a copy: the model's weights and BatchNorm statistics stay untouched) what
    `memory_format="auto"` and `eval_batch_size=0` leave open; values given are kept as given.
    `trains` names what trains (the update method); `load_now()` the CPUs other work keeps busy now
    (asked only when a provisional measurement could be reused)."""
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
    key = "|".join(map(str, (probe_cache.machine_key(device), probe_cache.model_key(model, trains),
                             tuple(input_shape), batch_size, fmt, eval_batch_size, candidates)))
    cached = probe_cache.usable_entry(CACHE_FILE, key, load_now)
    if cached is not None:
        return LayoutChoice(cached["memory_format"], cached["eval_batch_size"], "measured earlier",
                            cached["train_s_per_step"], {int(k): v for k, v in cached["eval_images_per_s"].items()},
                            other_load_cpus=cached.get("other_load_cpus"),
                            provisional=bool(cached.get("provisional")), cache_key=key)
    t0 = time.perf_counter()
    with probe_cache.OtherLoad() as load, random_streams_kept(device):
        fmt, timings, chosen_eval, rates, flops = _measure(model, input_shape, num_classes, device, batch_size, fmt,
                                                           eval_batch_size, candidates, autocast)
    choice = LayoutChoice(fmt, chosen_eval, source, timings, rates, time.perf_counter() - t0, flops)
    kept = probe_cache.keep(CACHE_FILE, key, {k: v for k, v in choice.to_json().items()
                                              if k not in ("other_load_cpus", "provisional", "cache_key")}, load.cpus)
    if kept["memory_format"] != fmt or kept["eval_batch_size"] != chosen_eval:   # another run's came first
        choice.memory_format, choice.eval_batch_size = kept["memory_format"], kept["eval_batch_size"]
    choice.other_load_cpus, choice.provisional, choice.cache_key = kept["other_load_cpus"], kept["provisional"], key
    return choice


def _measure(model, input_shape, num_classes, device, batch_size, fmt, eval_batch_size, candidates, autocast):
    """The probe itself, on a copy of the model: (layout, step timings, evaluation batch, rates, FLOPs)."""
    probe = copy.deepcopy(model).to(device)
    counter = FlopCounter(model, input_shape)
    gen = torch.Generator().manual_seed(0)     # leaves the run's random streams alone
    batch_size = max(batch_size, 2)            # BatchNorm cannot train on one sample
    x = torch.randn(max(batch_size, max(candidates)), *input_shape, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    timings: dict = {}
    flops = 0
    if fmt == "auto":
        with autocast():
            timings = _time_train_steps(probe, x[:batch_size], y, PROBE_STEPS)
        f, b = counter.train_step(batch_size)
        flops += len(FORMATS) * (PROBE_STEPS + 1) * (f + b)
        fmt = "channels_last" if timings["channels_last"] < MARGIN * timings["contiguous"] else "contiguous"
    rates: dict = {}
    chosen_eval = eval_batch_size
    if not chosen_eval:
        probe = probe.to(memory_format=FORMATS[fmt])
        rates = _eval_rates(probe, to_layout(x, FORMATS[fmt]), candidates, autocast)
        flops += (EVAL_ROUNDS + 1) * sum(counter.eval_batch(min(b, len(x))) for b in candidates)
        chosen_eval = max(rates, key=rates.get)
    return fmt, timings, chosen_eval, rates, flops
