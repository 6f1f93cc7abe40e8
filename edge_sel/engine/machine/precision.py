"""Numeric precision of the training step and of the forward-only passes, chosen per device.

bf16 autocast halves the bytes every convolution moves and, on CPUs with bf16 instructions
(AVX512-BF16, AMX, Arm BF16), runs oneDNN's bf16 kernels: often about twice as fast. Where the
CPU lacks them oneDNN emulates bf16 and is slower than fp32, so "auto" never picks bf16 there, and
elsewhere only where a short measurement finds it clearly faster (kept for later runs, and measured
again when it was taken under load, by engine/machine/probe_cache.py's rules). Losses, embarrassment statistics
and every accumulator stay fp32 (the backend casts logits to fp32 before any loss).

Forward-only passes (evaluation, scoring passes, BatchNorm re-estimation) get their own decision:
bf16 only where it is faster *and* the run's own validation images are classified as accurately as
in fp32 by the starting weights. On CUDA "auto" keeps what mixed precision always meant here: bf16
where the GPU does it natively (compute capability 8.0+), else fp16 with loss scaling.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.data import IndexedDataset
from edge_sel.device_caps import PRECISION_DTYPES, native_bf16
from edge_sel.engine.evaluation.evaluate import accuracy, predict_dataset
from edge_sel.engine.machine import probe_cache
from edge_sel.engine.machine.device import random_streams_kept
from edge_sel.engine.machine.layout import to_layout

DTYPES = PRECISION_DTYPES
PROBE_STEPS = 5           # timed steps per precision, interleaved, after one untimed warm-up each
# bf16 must win clearly: near a tie, timing noise would flip the choice (and with it every
# rounding of an otherwise identical seeded run) from one run to the next.
MARGIN = 0.9
CHECK_IMAGES = 1000       # validation images the forward-only check classifies in both precisions
ACCURACY_TOLERANCE = 0.001    # "unchanged": at most 1 image in 1000 more or fewer right
CACHE_FILE = "precision.json"


@dataclass
class PrecisionChoice:
    train: str                              # "fp32", "bf16" or "fp16": the training step's autocast
    eval: str                               # the same for evaluation, scoring and BN re-estimation
    source: str                             # "measured", "measured earlier", "given", "cuda", ...
    reason: str                             # one sentence a user can check
    train_s_per_step: dict = field(default_factory=dict)       # precision -> fastest step's seconds
    eval_images_per_s: dict = field(default_factory=dict)      # precision -> images/s of the fastest batch
    eval_check: dict = field(default_factory=dict)             # images, accuracy per precision, agreement
    probe_wall_s: float = 0.0
    probe_flops: int = 0                    # compute the measurement ran (outside every epoch)
    other_load_cpus: float | None = None    # CPUs other work kept busy while it was measured
    provisional: bool = False               # measured under load: a quiet start measures again
    cache_key: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def autocast(device: torch.device, precision: str):
    """A context for the passes run in `precision` (fp32: no autocast at all)."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def faster(timings: dict) -> str:
    """bf16 when its step takes under MARGIN of fp32's, else fp32 (seconds per step)."""
    return "bf16" if timings["bf16"] < MARGIN * timings["fp32"] else "fp32"


def _time_interleaved(run, precisions=("fp32", "bf16"), steps: int = PROBE_STEPS) -> dict:
    """Fastest seconds of `run(precision)` over `steps` calls, the precisions taking turns: other
    work on the machine only ever adds time, so the minimum is what the arithmetic costs (medians
    of a few steps swung 3x under load here). Each one's first call pays kernel selection."""
    times: dict = {p: [] for p in precisions}
    for i in range(steps + 1):
        for p in precisions:
            t0 = time.perf_counter()
            run(p)
            if i:
                times[p].append(time.perf_counter() - t0)
    return {p: min(t) for p, t in times.items()}


def measure(model: nn.Module, input_shape: tuple, num_classes: int, device: torch.device, batch_size: int,
            memory_format: torch.memory_format, eval_batch_size: int) -> tuple[dict, dict, int]:
    """Seconds per training step and evaluation images/s in fp32 and bf16, on a copy of the model
    (its weights and BatchNorm statistics stay untouched); returns them with the FLOPs run."""
    probe = copy.deepcopy(model).to(device).to(memory_format=memory_format)
    gen = torch.Generator().manual_seed(0)         # leaves the run's random streams alone
    batch_size = max(batch_size, 2)                # BatchNorm cannot train on one sample
    x = to_layout(torch.randn(max(batch_size, eval_batch_size), *input_shape, generator=gen).to(device),
                  memory_format)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)

    def train_step(p: str) -> None:
        probe.train()
        with autocast(device, p):
            loss = nn.functional.cross_entropy(probe(x[:batch_size]).float(), y)
        loss.backward()
        probe.zero_grad(set_to_none=True)
        _sync(device)

    def eval_batch(p: str) -> None:
        probe.eval()
        with torch.inference_mode(), autocast(device, p):
            probe(x[:eval_batch_size])
        _sync(device)
    train = _time_interleaved(train_step)
    evals = _time_interleaved(eval_batch)
    counter = FlopCounter(model, input_shape)
    runs = 2 * (PROBE_STEPS + 1)
    f, b = counter.train_step(batch_size)
    flops = runs * (f + b) + runs * counter.eval_batch(min(eval_batch_size, len(x)))
    rates = {p: min(eval_batch_size, len(x)) / s for p, s in evals.items()}
    return train, rates, flops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_eval(model: nn.Module, ds: IndexedDataset, mean, std, device, batch_size: int,
               memory_format: torch.memory_format) -> dict:
    """The starting weights on up to CHECK_IMAGES validation images in fp32 and in bf16: accuracy
    in each and the share of images given the same class."""
    n = min(len(ds), CHECK_IMAGES)
    ds = ds.subset(torch.arange(n, device=ds.images.device))
    was_training = model.training
    model.eval()
    logits = {}
    for p in ("fp32", "bf16"):
        def predict(x, p=p):
            with autocast(device, p):
                return model(x).float()
        logits[p] = predict_dataset(predict, ds, mean, std, batch_size, memory_format)
    model.train(was_training)
    agree = (logits["fp32"].argmax(1) == logits["bf16"].argmax(1)).float().mean().item() if n else None
    return {"images": n, "accuracy": {p: accuracy(v, ds.labels) for p, v in logits.items()}, "agreement": agree}


def accuracy_unchanged(check: dict) -> bool:
    acc = check.get("accuracy", {})
    if not check.get("images") or acc.get("fp32") is None:
        return False
    return abs(acc["bf16"] - acc["fp32"]) <= ACCURACY_TOLERANCE + 1e-12


def choose_precision(model: nn.Module, input_shape: tuple, num_classes: int, device: torch.device,
                     batch_size: int, memory_format: torch.memory_format, eval_batch_size: int,
                     precision: str = "auto", eval_precision: str = "auto", check_ds: IndexedDataset | None = None,
                     mean=None, std=None, trains: str = "dense", load_now=None) -> PrecisionChoice:
    """`precision` as given, or (auto) decided for this device; `eval_precision` likewise for the
    forward-only passes (auto: the given `precision`, or decided with it). `trains` names what trains
    (the update method); `load_now()` the CPUs other work keeps busy now (asked only when a
    provisional measurement could be reused)."""
    device = torch.device(device)
    if precision != "auto":
        return PrecisionChoice(precision, eval_precision if eval_precision != "auto" else precision, "given",
                               "--precision " + precision)
    if device.type == "cuda":
        p = "bf16" if native_bf16(device) else "fp16"
        why = "the GPU does bf16 natively" if p == "bf16" else "no native bf16 on this GPU: fp16 with loss scaling"
        return PrecisionChoice(p, p, "cuda", why)
    if device.type != "cpu" or not native_bf16(device):
        return PrecisionChoice("fp32", "fp32", "no native bf16",
                               f"{device.type}: no bf16 instructions (avx512_bf16, amx_bf16 or Arm bf16), "
                               "so bf16 would be emulated and slower")
    t0 = time.perf_counter()
    key = "|".join(map(str, (probe_cache.machine_key(device), probe_cache.model_key(model, trains),
                             tuple(input_shape), batch_size, memory_format, eval_batch_size)))
    kept = probe_cache.usable_entry(CACHE_FILE, key, load_now)
    flops = 0
    if kept is not None:
        source = "measured earlier"
    else:
        source = "measured"
        with probe_cache.OtherLoad() as load, random_streams_kept(device):
            train_s, eval_rates, flops = measure(model, input_shape, num_classes, device, batch_size, memory_format,
                                                 eval_batch_size)
        kept = probe_cache.keep(CACHE_FILE, key, {"train_s_per_step": train_s, "eval_images_per_s": eval_rates},
                                load.cpus)
    train_s, eval_rates = kept["train_s_per_step"], kept["eval_images_per_s"]
    train = faster(train_s)
    eval_fast = faster({p: 1 / r for p, r in eval_rates.items()})
    check: dict = {}
    if eval_fast == "bf16" and check_ds is not None and len(check_ds):
        check = check_eval(model, check_ds, mean, std, device, eval_batch_size, memory_format)
        flops += 2 * sum(FlopCounter(model, input_shape).eval_batch(min(eval_batch_size, check["images"] - lo))
                         for lo in range(0, check["images"], eval_batch_size))
    evaluation = "bf16" if eval_fast == "bf16" and accuracy_unchanged(check) else "fp32"
    ratio = train_s["fp32"] / train_s["bf16"]
    reason = (f"training step bf16 {ratio:.2f}x fp32 ({'' if train == 'bf16' else 'not '}faster than "
              f"1/{MARGIN}); evaluation bf16 {eval_rates['bf16'] / eval_rates['fp32']:.2f}x fp32")
    if eval_fast == "bf16" and evaluation == "fp32":
        reason += "; evaluation kept fp32: " + (
            "no validation images to check its accuracy" if not check else
            f"accuracy on {check['images']} validation images {check['accuracy']['fp32']:.4f} in fp32, "
            f"{check['accuracy']['bf16']:.4f} in bf16")
    if kept.get("provisional"):
        reason += f"; measured with {kept['other_load_cpus']:.2f} CPUs of other work: measured again on a quiet start"
    return PrecisionChoice(train, evaluation, source, reason, train_s, eval_rates, check,
                           time.perf_counter() - t0, flops, kept.get("other_load_cpus"),
                           bool(kept.get("provisional")), key)
