"""A step that keeps less for backward where weights are frozen, with the same gradients to the bit.

Autograd keeps a convolution's input for its weight's gradient even where the weight is frozen, and
keeps both a BatchNorm layer's input and its activation's output: training only biases and norms
keeps, per convolution-norm-activation, two maps where one does (TinyTL's observation; their answer
is to train less, this one is to keep less). Lean saves change two things, and no arithmetic:

- a frozen convolution keeps only its weight; backward computes the input's gradient from the
  output's gradient with the same kernel autograd calls (`convolution_backward`, input gradient only),
  on a stand-in input of the right size that is never read;
- a norm followed by an activation inside a Sequential runs as one recomputed pair: forward keeps the
  norm's input, backward runs the pair again (elementwise work) and differentiates it as autograd
  would: with frozen statistics by calling the backward kernels autograd calls, else with a second
  autograd pass. BatchNorm in training mode keeps its running statistics while the pair runs again.

Under autocast the plain step runs (its kernels read cast copies lean saves would have to keep).

Measured (Lite0, 96 px, batch 32, biases and norms trained, statistics frozen): 460 MiB saved for
backward against 173, the same gradients to the bit, contiguous and channels-last.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from edge_sel.core.recompute import set_recomputed, statistics_kept

_LEAN = "_edge_sel_lean"
AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU)


def _channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-d tensor's strides read as channels-last, by the rule torch's convolutions pick a
    layout with (c10's is_channels_last_strides_2d; torch._prims_common.suggest_memory_format in
    Python). Written out on plain integers: 0.7 us a call against that function's 13.5, once a frozen
    convolution (twice for a channels-last input). Lite0's lean step of 32 images in micro-batches of
    one image runs 1,536 frozen convolutions, about 20 ms of its 0.8 s."""
    if t.dim() != 4 or t.layout != torch.strided:
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    low = 0
    for d in (1, 3, 2, 0):
        # Ambiguous strides (a size-1 dimension) read as the default layout, as torch reads them.
        if sizes[d] == 0 or strides[d] < low or (d == 0 and low == strides[1]):
            return False
        low = strides[d] * sizes[d]
    return True


class _InputFreeConvolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.input_shape, ctx.settings = x.shape, (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        weight, = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.settings
        stand_in = grad.new_empty(1).expand(ctx.input_shape)      # its size is read, never its values
        grad_input = torch.ops.aten.convolution_backward(grad, stand_in, weight, None, stride, padding, dilation,
                                                         False, [0, 0], groups, (True, False, False))[0]
        return grad_input, None, None, None, None, None, None


def _lean_convolution(module: nn.Conv2d, x, weight, bias):
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    # A channels-last input beside a contiguous weight picks its kernel by the input's layout, which
    # the stand-in does not have: such a convolution keeps its input.
    plain_layout = not _channels_last(x) or _channels_last(weight)
    if (frozen and torch.is_grad_enabled() and x.requires_grad and plain_layout and not _autocast(x)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)):
        return _InputFreeConvolution.apply(x, weight, bias, module.stride, module.padding, module.dilation,
                                           module.groups)
    return type(module)._conv_forward(module, x, weight, bias)


class _RecomputedPair(torch.autograd.Function):
    """A norm and its activation, keeping only the norm's input: backward runs the pair again and
    differentiates it with autograd (the same kernels as a plain step). Cheaper than
    torch.utils.checkpoint per call: Lite0's micro-batches of 9 took 14% more CPU time than a plain
    step with it, 21% with checkpoint."""

    @staticmethod
    def forward(ctx, x, pair, norm, *params):
        ctx.pair, ctx.norm = pair, norm
        ctx.save_for_backward(x)
        return pair(x)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        wants_input, wants_params = ctx.needs_input_grad[0], ctx.needs_input_grad[3:]
        frozen = _frozen_pair_backward(ctx.norm, ctx.pair.activation, x, grad, wants_input, wants_params)
        if frozen is not None:
            return (frozen[0], None, None, *frozen[1:1 + len(wants_params)])
        x = x.detach().requires_grad_(wants_input)
        params = list(ctx.norm.parameters())
        # What the second run keeps lives only while this backward runs: the outer step's hooks (the
        # counter's) do not see it as saved, as with torch.utils.checkpoint's recomputation.
        with torch.enable_grad(), statistics_kept(ctx.norm), torch.autograd.graph.saved_tensors_hooks(_same, _same):
            out = ctx.pair(x)
        asked = [t for t, want in zip([x, *params], [wants_input, *wants_params]) if want]
        found = iter(torch.autograd.grad(out, asked, grad))
        return (next(found) if wants_input else None, None, None,
                *[next(found) if want else None for want in wants_params])


# What autograd's backward of each activation calls, given the activation's input `z`: one kernel.
_ACTIVATION_BACKWARD = {
    nn.ReLU6: lambda a, grad, z: torch.ops.aten.hardtanh_backward(grad, z, a.min_val, a.max_val),
    nn.Hardtanh: lambda a, grad, z: torch.ops.aten.hardtanh_backward(grad, z, a.min_val, a.max_val),
    nn.ReLU: lambda a, grad, z: torch.ops.aten.threshold_backward(grad, torch.relu(z), 0),
    nn.SiLU: lambda a, grad, z: torch.ops.aten.silu_backward(grad, z),
    nn.Hardswish: lambda a, grad, z: torch.ops.aten.hardswish_backward(grad, z),
    nn.GELU: lambda a, grad, z: torch.ops.aten.gelu_backward(grad, z, approximate=a.approximate),
}


def _frozen_pair_backward(norm: nn.Module, activation: nn.Module, x, grad, wants_input: bool, wants_params):
    """The pair's gradients where the norm's statistics are frozen (eval mode) and the activation is one
    of _ACTIVATION_BACKWARD: the kernels autograd's own backward calls, on the tensors it would have
    saved, without a second autograd pass (in micro-batches of one image that pass cost as much as the
    pair's arithmetic: Lite0's lean step took 1.64x a plain one). None where this does not apply."""
    backward = _ACTIVATION_BACKWARD.get(type(activation))
    if backward is None or norm.training or norm.running_mean is None:
        return None
    mask = [wants_input, *(list(wants_params) + [False, False])[:2]]
    with torch.no_grad():
        z, mean, invstd = torch.ops.aten.native_batch_norm(x, norm.weight, norm.bias, norm.running_mean,
                                                           norm.running_var, False, 0.0, norm.eps)
        found = torch.ops.aten.native_batch_norm_backward(backward(activation, grad, z), x, norm.weight,
                                                          norm.running_mean, norm.running_var, mean, invstd,
                                                          False, norm.eps, mask)
    return tuple(t if want else None for t, want in zip(found, mask))


class _Pair:
    """A norm's forward, then its activation's (as built: taken before lean saves replace it)."""

    def __init__(self, norm_forward, activation: nn.Module):
        self.norm_forward, self.activation, self.activation_forward = norm_forward, activation, activation.forward

    def __call__(self, x):
        return self.activation_forward(self.norm_forward(x))


def _pair_forward(norm: nn.Module, pair, x):
    if (not torch.is_grad_enabled() or _autocast(x)
            or not (x.requires_grad or any(p.requires_grad for p in norm.parameters()))):
        return pair(x)
    return _RecomputedPair.apply(x, pair, norm, *norm.parameters())


def _autocast(x: torch.Tensor) -> bool:
    """Under autocast the kernels run on cast copies, which lean saves do not keep: the plain step runs."""
    return x.device.type in AUTOCAST_DEVICES and torch.is_autocast_enabled(x.device.type)


def set_lean(model: nn.Module, on: bool | tuple[str, ...] | list[str]) -> None:
    """Lean saves on every frozen convolution and norm-activation pair of `model` (True), only on those
    inside the modules named (a tuple of names: the earliest blocks, whose maps are the largest), or
    off (False or none named: as built)."""
    for module in model.modules():
        if _LEAN in module.__dict__:
            for name in module.__dict__.pop(_LEAN):
                module.__dict__.pop(name, None)
    if not on:
        return
    named = dict(model.named_modules())
    inside = model.modules() if on is True else (m for name in on for m in named[name].modules())
    for module in inside:
        if isinstance(module, nn.Conv2d) and "_conv_forward" not in module.__dict__:
            module._conv_forward = partial(_lean_convolution, module)
            module.__dict__[_LEAN] = ["_conv_forward"]
        if isinstance(module, nn.Sequential):
            children = list(module)
            for norm, activation in zip(children, children[1:]):
                if isinstance(norm, nn.modules.batchnorm._BatchNorm) and isinstance(activation, ACTIVATIONS) \
                        and "forward" not in norm.__dict__ and "forward" not in activation.__dict__:
                    norm.forward = partial(_pair_forward, norm, _Pair(norm.forward, activation))
                    activation.forward = _identity
                    norm.__dict__[_LEAN] = ["forward"]
                    activation.__dict__[_LEAN] = ["forward"]


def _identity(x):
    return x


def _same(t):
    return t


def set_saves(model: nn.Module, recompute: list[str] | tuple[str, ...] = (),
              lean: bool | tuple[str, ...] | list[str] = False) -> None:
    """What a step of `model` keeps for backward, as a step shape says: the blocks recomputed in
    backward and lean saves, everywhere or in the blocks named (both off by default: the model as
    built)."""
    set_recomputed(model, recompute)
    set_lean(model, lean)


LEAN_NOTE = "lean saves: frozen convolutions keep no input, norm-activation pairs run again in backward"


def lean_note(lean: bool | tuple[str, ...], blocks: int) -> list[str]:
    """A plan's note on its lean saves, none where it keeps everything autograd keeps."""
    if not lean:
        return []
    return [LEAN_NOTE if lean is True else f"{LEAN_NOTE}, in the first {len(lean)} of {blocks} blocks"]


def lean_key(lean: bool | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """What a cache key says of a step's lean saves: nothing where there are none."""
    if not lean:
        return ()
    return ("lean",) if lean is True else ("lean", *lean)


def lean_words(lean: bool | tuple[str, ...] | list[str]) -> str:
    """Where a step keeps less, in words."""
    return "lean saves" if lean is True else f"lean saves in the first {len(lean)} blocks"


def is_lean(model: nn.Module) -> bool:
    return any(_LEAN in m.__dict__ for m in model.modules())
