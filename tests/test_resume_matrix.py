"""Every strategy, preset and updater survives a power cut: a real `edge-sel finetune` process is
SIGKILLed inside the first epoch and inside a later one, resumed with `--resume`, and ends with the
records of a run that was never interrupted (time and energy aside)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import records, stable

pytestmark = pytest.mark.slow

# 128 training samples at batch 16: 8 steps an epoch, a checkpoint every 3 steps. Step 5 dies
# inside epoch 0 (two steps after its last checkpoint), step 13 inside epoch 1.
COMMON = ["--dataset", "synthetic", "--subset", "128", "--batch-size", "16", "--epochs", "3",
          "--checkpoint-every", "3", "--seed", "11", "--quiet",
          # Layout, evaluation batch and precision fixed: two configurations run at once, and a
          # reference run and its killed twin that each measured their own choice under that load
          # could choose differently (a bf16 cell overrides the precision below).
          "--memory-format", "channels_last", "--eval-batch-size", "64", "--precision", "fp32"]
# One torch thread per process: two processes share the two cores without oversubscription.
ENV = {"OMP_NUM_THREADS": "1"}

CONFIGS = {
    "dense": [],
    "random": ["--strategy", "random", "--target-activation", "0.5"],
    "sundew": ["--strategy", "sundew", "--target-activation", "0.5", "--unbiased"],
    "sundew-energy-budget": ["--strategy", "sundew", "--energy-budget-per-epoch", "50"],
    "infobatch": ["--strategy", "infobatch"],
    "dihcl": ["--strategy", "dihcl", "--dih-warm", "1"],
    "sel": ["--strategy", "sel", "--stages", "0-50::1,30-100::2"],
    "sel-gated": ["--strategy", "sel", "--gate", "sundew", "--target-activation", "0.6",
                  "--stages", "0-50::1,30-100::2"],
    "sel-95": ["--strategy", "sel", "--preset", "sel-95", "--stages", "0-50::1,30-100::2", "--batch-size", "16"],
    "warmup-sel": ["--strategy", "sel", "--preset", "warmup-sel", "--stages", "0-50::1,30-100::1",
                   "--easy-warmup-epochs", "1", "--easy-warmup-size", "40", "--batch-size", "16"],
    "sel-v3": ["--strategy", "sel", "--preset", "sel-v3", "--stages", "0-50::1,30-100::2", "--batch-size", "16"],
    "ast-prod": ["--strategy", "sundew", "--preset", "ast-prod"],
    "ast-two": ["--strategy", "sundew", "--preset", "ast-two", "--target-activation", "0.4"],
    "mask": ["--sparsity", "mask"],
    "layers": ["--sparsity", "layers", "--probe-every", "2"],
    # bf16 autocast in the training step and in the forward-only passes (evaluation, gating scores)
    "bf16": ["--precision", "bf16", "--strategy", "sundew", "--target-activation", "0.5"],
}


def python(*args, env=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ENV, **(env or {})})


def finetune_process(warm, out, extra, env=None):
    return python("-m", "edge_sel", "finetune", "--checkpoint", warm, "--out", out, *COMMON, *extra, env=env)


def kill_points(reference: list[dict]) -> tuple[int, int]:
    """A step inside the first epoch and one inside the second, from the uninterrupted run."""
    steps = [r["optimizer_steps"] for r in reference]
    assert steps[0] >= 2 and steps[1] >= 2, f"too few steps per epoch to die inside one: {steps}"
    return steps[0] // 2 + 1, steps[0] + steps[1] // 2 + 1


def killed_twice_then_resumed(start, out, reference: list[dict]) -> str | None:
    """The run dies inside epoch 0, its resume dies inside epoch 1, the second resume finishes.
    Returns what went wrong, or None when the records equal the uninterrupted run's."""
    first, second = kill_points(reference)
    attempt = start(out, {"EDGE_SEL_FAULT_KILL_AT_STEP": str(first)})
    if attempt.returncode != -9:
        return f"not killed at step {first}: {attempt.returncode} {attempt.stderr[-1500:]}"
    attempt = python("-m", "edge_sel", "finetune", "--resume", out, "--quiet",
                     env={"EDGE_SEL_FAULT_KILL_AT_STEP": str(second)})
    if attempt.returncode != -9:
        return f"resume not killed at step {second}: {attempt.returncode} {attempt.stderr[-1500:]}"
    attempt = python("-m", "edge_sel", "finetune", "--resume", out, "--quiet")
    if attempt.returncode != 0:
        return f"second resume failed: {attempt.stderr[-1500:]}"
    got = stable(records(out))
    if got != reference:
        diff = [(i, k, reference[i].get(k), got[i].get(k)) for i in range(min(len(got), len(reference)))
                for k in reference[i] if reference[i].get(k) != got[i].get(k)]
        return f"records differ (epoch, field, uninterrupted, resumed): {diff[:6]}"
    return None


def one_config(warm, root, name) -> str | None:
    extra = CONFIGS[name]
    done = finetune_process(warm, root / "reference", extra)
    if done.returncode != 0:
        return f"reference run failed: {done.stderr[-1500:]}"
    reference = stable(records(root / "reference"))
    try:
        problem = killed_twice_then_resumed(lambda o, env: finetune_process(warm, o, extra, env), root / "run",
                                            reference)
    except AssertionError as e:
        return str(e)
    if problem is None and json.loads((root / "run" / "summary.json").read_text())["kept"] != \
            json.loads((root / "reference" / "summary.json").read_text())["kept"]:
        problem = "a different output model was kept"
    return problem


def test_every_strategy_preset_and_updater_resumes_to_the_same_records(tiny_warm, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = dict(zip(CONFIGS, pool.map(lambda n: one_config(tiny_warm, tmp_path / n, n), CONFIGS)))
    assert {n: p for n, p in problems.items() if p} == {}


LOTTERY_RUN = """
import sys
from pathlib import Path
import edge_sel.bench  # registers the lottery updater
from edge_sel.cli import build_config  # noqa: F401  (the CLI's registries)
from edge_sel.config import TrainConfig
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune
warm, mask, out = sys.argv[1:4]
# Layout, evaluation batch and precision fixed, as COMMON fixes them for the command line: a
# reference run and its killed twin that each probed their own could choose differently.
cfg = TrainConfig(epochs=3, batch_size=16, checkpoint_every=3, seed=11, sparsity="lottery",
                  method={"lottery_mask": mask}, memory_format="channels_last", eval_batch_size=64,
                  precision="fp32", eval_precision="fp32")
finetune(Path(warm), DataOptions("synthetic", subset=128), cfg, Path(out), quiet=True)
"""


def test_the_lottery_updater_resumes_to_the_same_records(tiny_warm, tmp_path):
    from edge_sel.methods.update import lottery
    rewound = tmp_path / "rewound"
    lottery.prune_and_rewind(tiny_warm, tiny_warm, rewound, 0.5)
    script = tmp_path / "lottery_run.py"
    script.write_text(LOTTERY_RUN)

    def start(out, env=None):
        return python(script, rewound, rewound / lottery.MASK_FILE, out, env=env)
    assert start(tmp_path / "reference", None).returncode == 0
    expected = stable(records(tmp_path / "reference"))
    assert expected[0]["pruned_frac"] > 0.4
    assert killed_twice_then_resumed(start, tmp_path / "run", expected) is None
