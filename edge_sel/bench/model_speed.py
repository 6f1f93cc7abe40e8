"""What `edge-sel models` reports per built-in model: parameters, counted FLOPs per image, and
(with --measure) training and evaluation throughput measured on this machine."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.models import MODELS, count_parameters

INPUT = (3, 32, 32)       # CIFAR-sized, 10 classes: the table's common ground


def counted(name: str) -> dict:
    model = MODELS[name](num_classes=10, in_channels=INPUT[0])
    # A pair, halved: at 32 px EfficientNet-Lite's last stages are 1x1, where BatchNorm in training
    # mode refuses a batch of one; every count here is linear in the batch (checked: the same figures).
    forward, backward = (n // 2 for n in FlopCounter(model, list(INPUT)).train_step(2))
    return {"model": name, "parameters": count_parameters(model), "flops_forward": forward,
            "flops_train_step": forward + backward}


def _median_seconds(step, repeats: int) -> float:
    step()                                   # kernel selection and allocation happen once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measured(name: str, train_batch: int = 128, eval_batch: int = 256, repeats: int = 5,
             memory_format: torch.memory_format = torch.channels_last) -> dict:
    """Images per second of SGD training steps and of inference, channels_last, fixed seed."""
    torch.manual_seed(0)
    model = MODELS[name](num_classes=10, in_channels=INPUT[0]).to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(max(train_batch, eval_batch), *INPUT).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (train_batch,))

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[:train_batch]), y).backward()
        opt.step()

    @torch.inference_mode()
    def eval_step():
        model.eval()
        model(x[:eval_batch])
    return {"train_images_per_s": train_batch / _median_seconds(train_step, repeats),
            "eval_images_per_s": eval_batch / _median_seconds(eval_step, repeats),
            "threads": torch.get_num_threads(), "layout": "channels_last" if memory_format == torch.channels_last
            else "contiguous", "train_batch": train_batch, "eval_batch": eval_batch}
