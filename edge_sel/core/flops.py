"""Counted FLOPs of the passes actually run: torch.utils.flop_counter on a meta-device twin.

Counting runs once per (batch size, trainable set) on a copy of the model whose tensors live on
the `meta` device, so it costs no real compute and never touches the live model's state. The loop
multiplies nothing by a formula: a batch of size B adds the counts measured for size B.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from edge_sel.core.meta_twin import meta_twin
from edge_sel.core.micro_batches import sizes
from edge_sel.core.recompute import recomputed


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient of a convolution (input, weight) costs what its forward costs. torch's own
    formula transposes the weight shape, which for a grouped convolution counts every group against
    every channel: a depthwise 3x3's backward came out 65x its forward instead of 2x."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


# Formulas that replace torch's where its count is wrong for some models.
CORRECTED = {torch.ops.aten.convolution_backward: conv_backward_flop}


def counting() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=CORRECTED)


class FlopCounter:
    def __init__(self, model: nn.Module, input_shape: list[int]):
        self.model = model
        self.input_shape = list(input_shape)
        self._train: dict[tuple, tuple[int, int]] = {}
        self._eval: dict[int, int] = {}
        self.per_module: dict[str, int] = {}

    def _twin(self) -> nn.Module:
        twin = meta_twin(self.model)
        # A forward set on the instance (a BatchNorm bank routing images to their conditions) would
        # still call the live model; the plain forward counts the same FLOPs (one pass per image).
        twin.__dict__.pop("forward", None)
        for p_twin, p in zip(twin.parameters(), self.model.parameters()):
            p_twin.requires_grad_(p.requires_grad)
        return twin

    def _signature(self) -> tuple:
        # Recomputed blocks run their forward again in backward: the planner's trials and its gain
        # probe count one trainable set in several shapes, so a shape's count is its own.
        return tuple(p.requires_grad for p in self.model.parameters()), tuple(recomputed(self.model))

    def train_step(self, batch_size: int, micro_batch: int = 0) -> tuple[int, int]:
        """(forward, backward) FLOPs of one training step on `batch_size` samples, run in slices of
        `micro_batch` (0: at once); blocks recomputed in backward count their second forward there."""
        if not micro_batch or micro_batch >= batch_size:
            return self._gradient_step(batch_size, train_mode=True)
        f = b = 0
        for rows in sizes(batch_size, micro_batch):
            f_rows, b_rows = self._gradient_step(rows, train_mode=True)
            f, b = f + f_rows, b + b_rows
        return f, b

    def eval_gradient(self, batch_size: int = 1) -> tuple[int, int]:
        """(forward, backward) FLOPs of the loss gradient on `batch_size` samples with the model in
        eval mode (BatchNorm on running statistics: e.g. per-sample gradients for the Fisher)."""
        return self._gradient_step(batch_size, train_mode=False)

    def _gradient_step(self, batch_size: int, train_mode: bool) -> tuple[int, int]:
        key = (batch_size, self._signature(), train_mode)
        if key not in self._train:
            twin = self._twin().train(train_mode)
            if batch_size == 1:     # a step of one row runs BatchNorm on its running statistics (engine/loop/single_rows.py)
                for m in twin.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            x = torch.zeros(batch_size, *self.input_shape, device="meta")
            y = torch.zeros(batch_size, dtype=torch.long, device="meta")
            with counting() as fwd:
                loss = nn.functional.cross_entropy(twin(x), y, reduction="none").mean()
            backward = 0
            if loss.requires_grad:
                with counting() as bwd:
                    loss.backward()
                backward = bwd.get_total_flops()
            self._train[key] = (fwd.get_total_flops(), backward)
            if not self.per_module:
                self.per_module = {k: sum(v.values()) for k, v in fwd.get_flop_counts().items()}
        return self._train[key]

    def eval_batch(self, batch_size: int) -> int:
        if batch_size not in self._eval:
            twin = self._twin().eval()
            with torch.no_grad(), counting() as fwd:
                twin(torch.zeros(batch_size, *self.input_shape, device="meta"))
            self._eval[batch_size] = fwd.get_total_flops()
        return self._eval[batch_size]
