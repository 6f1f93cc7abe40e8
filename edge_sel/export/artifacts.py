"""One ORT training artifact set (training, eval and optimizer models plus a checkpoint) per
update scheme, with a weighted per-sample cross-entropy loss and the logits as a second output.

Trainable tensors are fixed here: ORT's gradient builder derives the backward graph only for the
tensors listed as trainable, so a smaller scheme is a smaller backward graph, not a mask.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
LABELS, SAMPLE_WEIGHT = "labels", "sample_weight"
OPTIMIZERS = ("sgd", "adamw")
ADAMW_BETAS, ADAMW_EPS = (0.9, 0.999), 1e-8   # torch.optim.AdamW's defaults


@contextlib.contextmanager
def native_stderr_silenced():
    """The gradient builder logs every graph transformer at INFO level from C++, past the Python
    logger settings; send file descriptor 2 elsewhere while it runs (errors still raise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def weighted_ce_block():
    """loss = mean_i sample_weight_i * CE(logits_i, labels_i): Plan weights (gating rescales,
    InfoBatch-style 1/keep) reach the gradient; ones give the plain mean."""
    import onnx
    from onnxruntime.training import onnxblock

    class WeightedCrossEntropy(onnxblock.Block):
        def __init__(self):
            super().__init__()
            self.ce = onnxblock.loss.CrossEntropyLoss(reduction="none")   # adds the `labels` input
            self.mul = onnxblock.blocks.Mul()
            self.mean = onnxblock.blocks.ReduceMean()

        def build(self, logits_name):
            per_sample = self.ce(logits_name)
            self.base.graph.input.append(
                onnx.helper.make_tensor_value_info(SAMPLE_WEIGHT, onnx.TensorProto.FLOAT, ["batch"]))
            return self.mean(self.mul(per_sample, SAMPLE_WEIGHT))

    return WeightedCrossEntropy()


def optimizer_block(name: str, weight_decay: float):
    """ORT's SGD is plain SGD (no momentum, no weight decay). AdamW is built in torch mode
    (adam_mode 0: decay before the update, torch's defaults for betas and eps), where onnxblock's
    own AdamW uses the Hugging Face variant."""
    from onnxruntime.training import artifacts, onnxblock
    from onnxruntime.training.onnxblock.optim.optim import AdamWOptimizer

    if name == "sgd":
        return artifacts.OptimType.SGD

    class TorchAdamWOptimizer(AdamWOptimizer):
        def build(self, learning_rate_name, step_name, parameter_sequence_name, gradient_sequence_name,
                  first_order_moment_sequence_name, second_order_moment_sequence_name):
            from onnxruntime.training.onnxblock import _graph_utils
            inputs = [learning_rate_name, step_name, parameter_sequence_name, gradient_sequence_name,
                      first_order_moment_sequence_name, second_order_moment_sequence_name]
            attrs = {"alpha": self._betas[0], "beta": self._betas[1], "epsilon": self._eps,
                     "weight_decay": self._weight_decay, "correct_bias": 1, "adam_mode": 0}
            return self._build_optimizer_node(inputs, _graph_utils.generate_graph_name("adamw.updated_flag"),
                                              "AdamWOptimizer", attrs)

    block = onnxblock.optim.AdamW(betas=ADAMW_BETAS, eps=ADAMW_EPS, weight_decay=weight_decay)
    block._adamw = TorchAdamWOptimizer(bias_correction=True, betas=ADAMW_BETAS, eps=ADAMW_EPS,
                                       weight_decay=weight_decay)
    return block


def repair_eval_batchnorm(path: Path) -> int:
    """generate_artifacts sets training_mode=0 on the eval model's BatchNormalization nodes but
    leaves their three outputs, which ORT refuses to load; keep the first output only."""
    import onnx

    proto = onnx.load(str(path))
    fixed = 0
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization" and len(node.output) > 1:
            del node.output[1:]
            for attr in node.attribute:
                if attr.name == "training_mode":
                    attr.i = 0
            fixed += 1
    onnx.save(proto, str(path))
    return fixed


def name_loss_output(path: Path, name: str = "loss") -> str:
    """onnxblock names the loss after the node that computes it (e.g. `onnx::reducemean_output::7`);
    clients follow the manifest, which calls it `loss`. Renames the graph's first output and every
    use of it; returns the old name."""
    import onnx

    proto = onnx.load(str(path))
    old = proto.graph.output[0].name
    if old != name:
        for node in proto.graph.node:
            for field in (node.input, node.output):
                for i, tensor in enumerate(field):
                    if tensor == old:
                        field[i] = name
        for info in (*proto.graph.output, *proto.graph.value_info):
            if info.name == old:
                info.name = name
        onnx.save(proto, str(path))
    return old


def backward_stats(directory: Path) -> dict:
    """Counts from the generated graphs. The gradient builder names every node it adds
    `<forward node>_Grad/...`; `*Grad` op types are the gradient kernels among them."""
    import onnx

    train = onnx.load(str(directory / "training_model.onnx")).graph
    evaluation = onnx.load(str(directory / "eval_model.onnx")).graph
    backward = [n for n in train.node if "_Grad/" in n.name]
    conv = [n for n in train.node if n.op_type == "ConvGrad"]
    return {
        "training_nodes": len(train.node),
        "eval_nodes": len(evaluation.node),
        "grad_nodes": len(backward),
        "grad_op_nodes": sum(n.op_type.endswith("Grad") for n in train.node),
        "conv_grad_nodes": len(conv),
        "conv_weight_grad_nodes": sum(len(n.output) > 1 and bool(n.output[1]) for n in conv),
        "gradient_accumulators": sum(n.op_type.startswith("InPlaceAccumulator") for n in train.node),
        "grad_ops": dict(sorted(collections.Counter(n.op_type for n in backward).items())),
    }


def generate_scheme(forward_proto, directory: Path, trainable: list[str], frozen: list[str], optimizer: str,
                    weight_decay: float, bn_mode: str, ort_format: bool) -> dict:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    from onnxruntime.training import artifacts

    directory.mkdir(parents=True, exist_ok=True)
    with native_stderr_silenced():
        artifacts.generate_artifacts(forward_proto, requires_grad=trainable, frozen_params=frozen,
                                     loss=weighted_ce_block(), optimizer=optimizer_block(optimizer, weight_decay),
                                     artifact_directory=directory, additional_output_names=["logits"])
    for model in FILES[:2]:
        name_loss_output(directory / model)
    repaired = repair_eval_batchnorm(directory / "eval_model.onnx") if bn_mode == "train" else 0
    if ort_format:   # converted after the repair, so the .ort eval model loads too
        with native_stderr_silenced(), contextlib.redirect_stdout(io.StringIO()):
            for name in FILES[:3]:
                convert_onnx_models_to_ort(directory / name, output_dir=directory,
                                           optimization_styles=[OptimizationStyle.Fixed])
    stats = backward_stats(directory)
    stats["eval_batchnorm_nodes_repaired"] = repaired
    return stats
