"""Train one artifact set made by `edge-sel export` with onnxruntime.training.api alone.

This is what a device without edge-sel runs: no edge_sel import, only onnxruntime-training and
numpy. It proves the artifacts are self-contained.

    python ort_standalone_train.py ART/<scheme> DATA.npz [--steps N] [--lr LR]

DATA.npz holds `x` (float32 N x C x H x W, already normalised as manifest.json says) and `y`
(int64 N). Prints a JSON line {"losses": [...], "accuracy_before": a, "accuracy_after": b} and exits
0 when the loss fell from the first step to the last, 1 otherwise.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from onnxruntime.training import api


def accuracy(module, x, y):
    module.eval()
    _, logits = module(x, np.zeros(len(y), np.int64), np.ones(len(y), np.float32))
    return float((logits.argmax(1) == y).mean())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()

    data = np.load(args.data)
    x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    state = api.CheckpointState.load_checkpoint(str(args.artifacts / "checkpoint"))
    module = api.Module(str(args.artifacts / "training_model.onnx"), state, str(args.artifacts / "eval_model.onnx"))
    optimizer = api.Optimizer(str(args.artifacts / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(args.lr)

    before = accuracy(module, x, y)
    weights = np.ones(len(y), np.float32)
    losses = []
    for _ in range(args.steps):
        module.train()
        loss, _ = module(x, y, weights)
        optimizer.step()
        module.lazy_reset_grad()
        losses.append(float(loss.reshape(-1)[0]))
    after = accuracy(module, x, y)
    print(json.dumps({"losses": losses, "accuracy_before": before, "accuracy_after": after}))
    return 0 if losses[-1] < losses[0] else 1


if __name__ == "__main__":
    sys.exit(main())
