"""What a run's config leaves open about the machine, decided before its first step: the memory
layout and evaluation batch size, then the precision of the training step and of forward-only
passes (measured in that layout). Values the config gives are kept as given."""

from __future__ import annotations

import torch

from edge_sel.config import TrainConfig
from edge_sel.data import IndexedDataset
from edge_sel.device_caps import amp_dtype, native_bf16
from edge_sel.engine.machine.layout import (EVAL_BATCH_CANDIDATES, EVAL_ROUNDS, FORMATS, PROBE_STEPS, LayoutChoice,
                                            choose_layout)
from edge_sel.engine.machine.precision import DTYPES, PrecisionChoice, choose_precision
from edge_sel.engine.machine.precision import PROBE_STEPS as PRECISION_STEPS
from edge_sel.errors import InputError

PROBE_SHARE = 0.1   # a probe runs where its training steps are at most this share of the run's
DTYPES_PROBED = ("fp32", "bf16")        # what the CPU's precision probe times (precision.py)
DEFAULT_EVAL_BATCH = 256    # where the evaluation batch is not measured (edgecnn: 2.5x the images/s of batch 1,000)


def fp32_unless(given: str) -> str:
    """A precision the config gives, or fp32 where it leaves it to a probe that does not run."""
    return "fp32" if given == "auto" else given


def run_layout(cfg: TrainConfig, model: torch.nn.Module, train_ds: IndexedDataset, largest_eval: int,
               device: torch.device, trains: str) -> LayoutChoice:
    """Channels-last or not, and the evaluation batch size: as given, or measured here."""
    if cfg.backend != "torch":       # ORT runs its own graph in its own layout
        return LayoutChoice("contiguous", cfg.eval_batch_size or 256, f"{cfg.backend} backend")
    if cfg.epochs == 0 and (cfg.memory_format == "auto" or not cfg.eval_batch_size):
        # No training step will run: a probe that times training steps costs more than the passes it
        # would speed up (a pretrain of 0 epochs from ImageNet: 302 of its 360 GFLOP).
        fmt = "contiguous" if cfg.memory_format == "auto" else cfg.memory_format
        return LayoutChoice(fmt, cfg.eval_batch_size or cfg.batch_size, "no training step: not measured")
    probe, trained = probe_samples(cfg.batch_size), cfg.epochs * len(train_ds)
    fmt = cfg.memory_format
    if fmt == "auto" and probe > PROBE_SHARE * trained:
        fmt = "contiguous"      # the layout saves a share of the training; a probe above that share cannot pay back
    eval_batch = cfg.eval_batch_size
    evaluated = (cfg.epochs + 1) * largest_eval      # about what the run evaluates: a pass an epoch and the test
    if not eval_batch and eval_probe_images(largest_eval) > PROBE_SHARE * evaluated:
        # Nor the evaluation batch where its probe is over that share of what the run evaluates (Lite0 at
        # 96 px, one epoch of 500 images: 1,536 images probed, 217 GFLOP, to evaluate 500).
        eval_batch = min(DEFAULT_EVAL_BATCH, largest_eval)
    autocast = None
    if device.type == "cuda" and cfg.precision != "fp32":
        dtype = amp_dtype(device) if cfg.precision == "auto" else DTYPES[cfg.precision]
        autocast = lambda: torch.autocast("cuda", dtype=dtype)      # noqa: E731 -- as training runs
    choice = choose_layout(model, train_ds.input_shape, train_ds.num_classes, device, cfg.batch_size,
                           fmt, eval_batch, largest_eval, autocast, trains=trains)
    if fmt != cfg.memory_format and choice.source == "given":
        choice.source = (f"not measured: the probe's {probe:,} training samples are over a tenth of the run's "
                         f"{trained:,}")
    if eval_batch != cfg.eval_batch_size and choice.source == "given":
        choice.source += "; the evaluation batch not measured: its probe would evaluate over a tenth of the run's images"
    return choice


def eval_probe_images(largest_eval: int) -> int:
    """Images the evaluation-batch probe runs forward: each batch size it times, its rounds and warm-up."""
    return sum(b for b in EVAL_BATCH_CANDIDATES if b <= largest_eval or b == EVAL_BATCH_CANDIDATES[0]) * (EVAL_ROUNDS + 1)


def probe_samples(batch_size: int) -> int:
    """Samples the layout probe trains on: each layout's timed steps and its warm-up."""
    return len(FORMATS) * (PROBE_STEPS + 1) * max(batch_size, 2)


def run_precision(cfg: TrainConfig, model: torch.nn.Module, train_ds: IndexedDataset, check_ds: IndexedDataset,
                  mean, std, device: torch.device, memory_format: torch.memory_format, eval_batch_size: int,
                  trains: str) -> PrecisionChoice:
    """fp32 or bf16 autocast for the training step and for forward-only passes: as given, or
    measured here (after the layout, in it)."""
    if cfg.backend != "torch":
        return PrecisionChoice("fp32", "fp32", f"{cfg.backend} backend", "ORT artifacts train in fp32")
    if "fp16" in (cfg.precision, cfg.eval_precision) and device.type != "cuda":
        raise InputError(f"--precision fp16: needs a CUDA device (its loss scaling is CUDA's); on "
                         f"{device.type} use bf16 or auto")
    # As the layout probe: a probe whose training steps are over PROBE_SHARE of the run's cannot pay back
    # (Lite0 at 96 px, one epoch of 500 images: 55 s of probing, 1,536 images trained, for a 3.5 s epoch).
    probe, trained = len(DTYPES_PROBED) * (PRECISION_STEPS + 1) * max(cfg.batch_size, 2), cfg.epochs * len(train_ds)
    # A CPU without bf16 instructions needs no probe to choose fp32: choose_precision says so.
    if device.type == "cpu" and cfg.precision == "auto" and probe > PROBE_SHARE * trained and native_bf16(device):
        train, evaluation = (fp32_unless(cfg.precision), fp32_unless(cfg.eval_precision))
        return PrecisionChoice(train, evaluation, "not measured",
                               f"the probe's {probe:,} training samples are over a tenth of the run's {trained:,}: fp32")
    return choose_precision(model, train_ds.input_shape, train_ds.num_classes, device, cfg.batch_size,
                            memory_format, eval_batch_size, cfg.precision, cfg.eval_precision, check_ds,
                            mean, std, trains=trains)


def trains_key(updater, cfg) -> str:
    """What trains, for the probes' cache key: the update method (the probes run before it attaches,
    so the parameters' own flags do not yet say it) and its options."""
    return f"{updater.name}|{cfg.sparsity}|{sorted(cfg.method.items())}"
