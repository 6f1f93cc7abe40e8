"""BatchNorm-affine training: only BatchNorm scales and shifts (and the head) move, and the counted
backward FLOPs are those of that smaller trainable set."""

import torch

from helpers import records, run_cli
from edge_sel.models import load_checkpoint


def test_only_batchnorm_affine_and_head_parameters_move(tiny_warm, tmp_path):
    out, dense = tmp_path / "run", tmp_path / "dense"
    common = ["--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--quiet", "--keep", "last"]
    run_cli("finetune", *common, "--sparsity", "bn-affine", "--out", out)
    run_cli("finetune", *common, "--out", dense)
    start, _ = load_checkpoint(tiny_warm)
    end, _ = load_checkpoint(out)
    bn = {f"{name}.{p}" for name, m in start.named_modules()
          if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in ("weight", "bias")}
    head = {f"fc.{p}" for p in ("weight", "bias")}
    moved = {n for (n, p), q in zip(start.named_parameters(), end.parameters()) if not torch.equal(p, q)}
    assert moved and moved <= bn | head and moved & bn
    [r], [d] = records(out), records(dense)
    assert r["trained_blocks"] == "batchnorm-affine+head" and 0.9 < r["frozen_frac"] < 1
    assert r["flops_forward"] == d["flops_forward"]
    # No weight gradients for the frozen convolutions; input gradients below the first BN remain.
    assert 0 < r["flops_backward"] < 0.6 * d["flops_backward"]
