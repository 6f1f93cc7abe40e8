"""A model's twin on the meta device, made without a copy of its data. `copy.deepcopy(model).to("meta")`
copied every weight on the host first: Lite0's 13 MiB, allocated and freed each time a count or a
FLOP figure needed a twin. A FLOP count made for a new number of rows inside a budgeted epoch (its first
step, its short last batch) put that copy into the epoch's measured peak."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


def meta_twin(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers are empty meta tensors of the same shapes,
    dtypes and `requires_grad`; everything else (hooks, attributes, modules) is copied as deepcopy does."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) not in memo:
            meta = torch.empty_like(tensor, device="meta")
            memo[id(tensor)] = (nn.Parameter(meta, requires_grad=tensor.requires_grad)
                                if isinstance(tensor, nn.Parameter) else meta)
    return copy.deepcopy(model, memo)
