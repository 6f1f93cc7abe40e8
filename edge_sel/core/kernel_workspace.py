"""Buffers a CPU convolution kernel allocates for itself, beside its inputs and output.

PyTorch runs an fp32 convolution on the CPU through oneDNN unless it is a 1 x 1, unstrided,
undilated convolution of fewer than 16 images on one thread, or a tiny single image (the
`use_mkldnn` rule of ATen's Convolution.cpp). oneDNN computes in a channel-blocked layout: for
NCHW tensors it keeps blocked copies of its operands while the kernel runs. These copies never pass
the dispatcher, so the meta-device count (core/memory.py) cannot see them; their size is a rule,
measured on this runtime's torch (one op at a time, resident high-water mark over the level before
it, batches 16 and 32, 3 to 96 channels, 1 x 1 and 3 x 3 kernels, strides 1 and 2, dense and
depthwise: every case within 2% or above):

- forward: the larger of the input (its channels padded to a multiple of 16) and the output;
- backward: input plus output gradient; a strided dense convolution that also computes the input's
  gradient keeps two inputs' worth when that is more.

Channels-last tensors need no blocked copies (oneDNN reads NHWC as it is): no workspace is
estimated for them, nor for CUDA (cuDNN's workspaces come from torch's allocator, where the
measured peak sees them).
"""

from __future__ import annotations

import torch

aten = torch.ops.aten
BLOCK = 16          # oneDNN's channel block on AVX-512 machines (8 on AVX2: the rule is then an upper bound)


def _nbytes(shape, element_size: int) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * element_size


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, stride, dilation, groups: int, threads: int) -> bool:
    """Whether ATen sends this fp32 CPU convolution to oneDNN (else its native kernels)."""
    one_by_one = tuple(weight.shape[-2:]) == (1, 1)
    if not (any(s != 1 for s in stride) or any(d != 1 for d in dilation) or x.shape[0] >= 16
            or not one_by_one or threads > 1):
        return False
    big_kernel = weight.shape[-1] > 3 and weight.shape[-2] > 3
    return groups > 1 or big_kernel or x.shape[0] > 1 or x.numel() > 20480


def _planar(*tensors: torch.Tensor) -> bool:
    return all(t.dim() == 4 and t.is_contiguous() for t in tensors)


def convolution_workspace(func, args, out, threads: int) -> int:
    """Bytes a CPU convolution (forward or backward) holds beyond its operands while it runs; 0 for
    every other operation and for layouts or kernels that keep no blocked copies."""
    if func is aten.convolution.default:
        x, weight, _bias, stride, _padding, dilation, transposed, _out_pad, groups = args[:9]
        if transposed or not _planar(x, weight) or not uses_onednn(x, weight, stride, dilation, groups, threads):
            return 0
        size = x.element_size()
        channels = -(-x.shape[1] // BLOCK) * BLOCK
        return max(_nbytes((x.shape[0], channels, *x.shape[2:]), size), out.numel() * size)
    if func is aten.convolution_backward.default:
        grad_out, x, weight, _bias_sizes, stride, _padding, dilation, transposed, _out_pad, groups, mask = args[:11]
        if transposed or not _planar(grad_out, x, weight) \
                or not uses_onednn(x, weight, stride, dilation, groups, threads):
            return 0
        size = x.element_size()
        channels = -(-x.shape[1] // BLOCK) * BLOCK
        x_bytes = _nbytes((x.shape[0], channels, *x.shape[2:]), size)
        held = x_bytes + grad_out.numel() * size
        if mask[0] and groups == 1 and any(s != 1 for s in stride):
            held = max(held, 2 * x_bytes)
        return held
    return 0
