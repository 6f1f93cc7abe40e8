"""TinyTL's lite residual branches (Cai et al., NeurIPS 2020): beside a frozen block, a small branch reads
the block's input at half its resolution, runs a grouped 5x5 convolution (2 groups, as many channels as it
reads) and a 1x1 convolution to the block's output channels, is upsampled bilinearly to the block's output
and added to it. The branch's last convolution starts at zero, so a model with fresh branches computes
exactly what it did without them. Branches are modules of their blocks (`<block>.lite_residual`): a
checkpoint keeps them, and residuals_from_weights rebuilds them from the weights' shapes before a load.
methods/update/lite_residual.py trains them.
"""

from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F

from edge_sel.core.meta_twin import meta_twin
from edge_sel.models.blocks import named_blocks

NAME = "lite_residual"
KERNEL = 5          # TinyTL's default kernel and groups
GROUPS = 2
SEED = 0


class LiteResidual(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        groups = GROUPS if channels_in % GROUPS == 0 else 1
        self.conv = nn.Conv2d(channels_in, channels_in, KERNEL, padding=KERNEL // 2, groups=groups)
        self.project = nn.Conv2d(channels_in, channels_out, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        if min(x.shape[-2:]) >= 2:
            x = F.avg_pool2d(x, 2, ceil_mode=True)
        x = self.project(F.relu6(self.conv(x)))
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


HOST = "_lite_residual_host"      # a block's plain attribute: the path, inside it, of the module holding its branch


def _add_residual(module: nn.Module, inputs, output):
    """A block's forward hook (a module-level function: a deep copy of the model, such as the meta-device
    counter's twin, keeps it working on its own branch)."""
    return output + getattr(module.get_submodule(getattr(module, HOST)), NAME)(inputs[0], output.shape[-2:])


def _host(block: nn.Module) -> str:
    """Where inside the block its branch lives: the first module without children that holds parameters
    (a convolution's forward never calls a child, where a Sequential block would call every child)."""
    for name, m in block.named_modules():
        if not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False)):
            return name
    return ""


def _wire(block: nn.Module, branch: LiteResidual) -> None:
    host = _host(block)
    setattr(block.get_submodule(host), NAME, branch)
    object.__setattr__(block, HOST, host)
    block.register_forward_hook(_add_residual)


def has_residuals(model: nn.Module) -> bool:
    return any(isinstance(m, LiteResidual) for m in model.modules())


def add_residuals(model: nn.Module, input_shape) -> list[str]:
    """Branches beside every block but the classifier whose input and output are image maps (4-d), sized
    by one forward pass on the meta device; returns the blocks given one. A model that has them keeps them."""
    if has_residuals(model):
        return [n for n, m in model.named_modules() if HOST in m.__dict__]
    blocks = named_blocks(model)[:-1]
    shapes: dict[str, tuple] = {}
    hooks = [block.register_forward_hook(
        lambda m, i, o, name=name: shapes.__setitem__(name, (tuple(i[0].shape), tuple(o.shape)))
        if isinstance(i[0], torch.Tensor) and isinstance(o, torch.Tensor) else None)
        for name, block in blocks]
    twin = meta_twin(model)      # the live blocks' shape hooks come with the copy
    try:
        with torch.no_grad():
            twin.eval()(torch.zeros(2, *input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    device = next(model.parameters()).device
    added = []
    # Drawn from a stream of their own: the same branches whenever they are made, and the run's streams untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        for name, block in blocks:
            shape_in, shape_out = shapes.get(name, ((), ()))
            if len(shape_in) == 4 and len(shape_out) == 4:
                _wire(block, LiteResidual(shape_in[1], shape_out[1]).to(device))
                added.append(name)
    return added


def remove_residuals(model: nn.Module) -> None:
    """The model as it was before add_residuals."""
    for block in list(model.modules()):
        if HOST in block.__dict__:
            delattr(block.get_submodule(block.__dict__.pop(HOST)), NAME)
            for key, hook in list(block._forward_hooks.items()):
                if hook is _add_residual:
                    del block._forward_hooks[key]


def residuals_from_weights(model: nn.Module, state: dict) -> None:
    """Branches rebuilt where a checkpoint's weights hold them (before a strict load)."""
    if has_residuals(model):
        return
    for name, block in named_blocks(model)[:-1]:
        key = f"{name}.{_host(block)}.{NAME}".replace("..", ".")
        if f"{key}.conv.weight" in state:
            _wire(block, LiteResidual(state[f"{key}.conv.weight"].shape[0], state[f"{key}.project.weight"].shape[0]))
