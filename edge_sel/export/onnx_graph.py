"""torch -> ONNX with the TorchScript exporter (dynamo=False).

torch 2.13's default dynamo exporter ignores `training=` and folds BatchNorm into the convolutions,
so the BN parameters vanish; the TorchScript exporter keeps every parameter as a named initializer
and can emit train-mode BatchNorm. Initializers are exported as graph inputs first so the exporter
does not merge equal-valued tensors (fresh BN weights are all ones), then turned back into plain
initializers.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17
INPUT, LOGITS = "input", "logits"
INFERENCE_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


def _export(model: nn.Module, input_shape, path: Path, train_bn: bool, for_training: bool) -> None:
    x = torch.zeros(2, *input_shape)
    mode = torch.onnx.TrainingMode.TRAINING if train_bn else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), dynamo=False, export_params=True, opset_version=OPSET,
                          do_constant_folding=not for_training, keep_initializers_as_inputs=for_training,
                          training=mode, input_names=[INPUT], output_names=[LOGITS],
                          dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"}})


class FrozenBatchNorm(nn.Module):
    """Eval-mode BatchNorm written as a per-channel affine map, x * scale + shift.

    ORT's gradient builder turns every BatchNormalization node into BatchNormInternal with
    training_mode=1, even in a graph exported in eval mode: the training step then normalises with
    batch statistics and moves the running statistics in place. Spelled out as elementwise ops, the
    running statistics stay constants of the step and only the scale and shift can train. Parameter
    and buffer names are the BatchNorm's own, so initializer names do not change.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())

    def forward(self, x):
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(view) + shift.reshape(view)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm module of `model` (in place) by FrozenBatchNorm."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, FrozenBatchNorm(child))
        else:
            freeze_batchnorm(child)
    return model


def export_training_forward(model: nn.Module, input_shape, path: Path, bn_mode: str):
    """The forward graph the training artifacts are built from; returns the onnx ModelProto.

    bn_mode "eval": BatchNorm normalises with the frozen running statistics (its scale and shift
    can still train). "train": batch statistics, and ORT updates the running statistics in place.
    """
    import onnx
    from onnx import numpy_helper

    twin = copy.deepcopy(model).cpu()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if bn_mode == "eval":
        freeze_batchnorm(twin)
    twin.train(bn_mode == "train")
    _export(twin, input_shape, path, train_bn=bn_mode == "train", for_training=True)
    proto = onnx.load(str(path))
    inits = proto.graph.initializer
    names = {t.name for t in inits}
    missing = [n for n, _ in model.named_parameters() if n not in names]
    if missing:
        raise ExportError(f"exported graph lacks parameters {missing[:3]}; cannot build artifacts")
    # Tracing a train-mode model runs one forward that moves the twin's BN running statistics:
    # write the checkpoint's own values back.
    for i, t in enumerate(inits):
        if t.name in state:
            inits[i].CopyFrom(numpy_helper.from_array(state[t.name].numpy(), t.name))
    graph_inputs = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(graph_inputs)
    onnx.save(proto, str(path))
    return proto


def export_inference(model: nn.Module, input_shape, path: Path, seed: int = 0) -> float:
    """Write the inference model (eval-mode BN, constants folded) and return the largest absolute
    difference from torch's logits over two batch sizes; raise ExportError above the tolerance."""
    import onnxruntime as ort

    twin = copy.deepcopy(model).cpu().eval()
    _export(twin, input_shape, path, train_bn=False, for_training=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in (8, 3):
        x = torch.randn(batch, *input_shape, generator=g)
        with torch.no_grad():
            expected = twin(x).numpy()
        got = session.run([LOGITS], {INPUT: x.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= INFERENCE_TOLERANCE:
        raise ExportError(f"{path}: ONNX logits differ from torch by {worst:.3g} (> {INFERENCE_TOLERANCE})")
    return worst
