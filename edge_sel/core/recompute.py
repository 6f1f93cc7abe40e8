"""Activation checkpointing of named blocks: their forward keeps only its input for backward and runs
again when backward reaches it (torch.utils.checkpoint), trading one more forward of the block for
the activations it would have kept.

BatchNorm in training mode would update its running statistics a second time while the block runs
again; during that second run each BatchNorm layer of the block keeps its statistics (momentum 0)
and its batch counter, so a recomputed step leaves the model exactly as a plain step does.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_ORIGINAL = "_edge_sel_forward"


@contextlib.contextmanager
def statistics_kept(module: nn.Module):
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _recomputed_forward(module: nn.Module, *args, **kwargs):
    forward = getattr(module, _ORIGINAL)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (*args, *module.parameters())
                                              if isinstance(t, torch.Tensor)):
        return forward(*args, **kwargs)       # nothing for backward to keep: run it plainly
    contexts = partial(lambda m: (contextlib.nullcontext(), statistics_kept(m)), module)
    # Dropout inside a block draws the same mask again; the meta device has no random state to keep.
    on_meta = any(isinstance(t, torch.Tensor) and t.is_meta for t in args)
    return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=not on_meta, context_fn=contexts,
                      **kwargs)


def set_recomputed(model: nn.Module, names: list[str] | tuple[str, ...]) -> None:
    """Recompute exactly the modules `names` lists in backward (any set before is undone)."""
    modules = dict(model.named_modules())
    for module in modules.values():
        if _ORIGINAL in module.__dict__:
            module.forward = module.__dict__.pop(_ORIGINAL)
            if module.forward == type(module).forward.__get__(module):
                del module.forward
    for name in names:
        module = modules[name]
        module.__dict__[_ORIGINAL] = module.forward
        module.forward = partial(_recomputed_forward, module)


def recomputed(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if _ORIGINAL in m.__dict__]
