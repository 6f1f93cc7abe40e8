"""--sparsity lite-residual (TinyTL's lite residual learning): the branches start as the frozen model,
only they and the biases (and the classifier) get gradients, the counted memory is the real step's, and
a fine-tune's checkpoint loads with its branches."""

import json

import pytest
import torch

from helpers import SAME_CHOICES, run_main
from edge_sel.core.memory import MiB, MemoryCounter, StepShape
from edge_sel.methods import make_updater
from edge_sel.methods.update.fixed_sets import classifier_names
from edge_sel.methods.update.lite_residual import residual_names
from edge_sel.models import build_model, load_checkpoint
from edge_sel.models.blocks import named_blocks
from edge_sel.models.lite_residual import add_residuals, has_residuals

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_process_growth(monkeypatch):
    """These plans are about candidates and sets: the process's growth before the first step (measured,
    and so dependent on what ran before in the process) is given as none."""
    monkeypatch.setenv("EDGE_SEL_PROCESS_GROWTH_MB", "0")

def model_with_residuals(name="mobilenetv2", size=16):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=[3, size, size])
    frozen = build_model(name, num_classes=10, input_shape=[3, size, size])
    frozen.load_state_dict(model.state_dict())
    added = add_residuals(model, [3, size, size])
    return model, frozen, added


def test_zero_initialised_branches_compute_what_the_frozen_model_did():
    model, frozen, added = model_with_residuals()
    assert len(added) >= 3 and has_residuals(model)
    # The blocks are the same blocks with their branches (what every other updater and the planner read).
    assert [n for n, _ in named_blocks(model)] == [n for n, _ in named_blocks(frozen)]
    x = torch.randn(4, 3, 16, 16)
    model.eval(), frozen.eval()
    with torch.no_grad():
        assert torch.equal(model(x), frozen(x))


def test_only_the_branches_the_biases_and_the_classifier_get_gradients():
    model, _, _ = model_with_residuals()
    updater = make_updater("lite-residual", {})
    updater.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), None)
    trains = residual_names(model)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == trains
    head = classifier_names(model)
    assert all("lite_residual." in n or n.endswith("bias") or n in head for n in got)
    # Weights of the frozen blocks stay frozen: the branches' own weights are the only conv weights that learn.
    assert any(n.endswith("lite_residual.project.weight") for n in got)
    assert not any(n.endswith(".weight") and "lite_residual" not in n and n not in head for n in got)


def test_the_counted_memory_is_the_real_steps_with_the_branches():
    """The counter copies the model with its branches and runs the real step: the branches' weights,
    gradients and activations are in the count (more than the same set without them)."""
    model, frozen, _ = model_with_residuals()
    opt = lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    with_branches = MemoryCounter(model, [3, 16, 16], opt).count(StepShape(16), residual_names(model))
    without = MemoryCounter(frozen, [3, 16, 16], opt).count(StepShape(16), residual_names(frozen))
    branch_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lite_residual" in n)
    # Weights, their gradients and momentum at the least.
    assert with_branches.peak - without.peak >= branch_bytes
    assert with_branches.optimizer - without.optimizer == branch_bytes


def test_a_lite_residual_fine_tune_runs_under_a_budget_and_its_checkpoint_loads(tiny_warm, tmp_path, capsys):
    out = tmp_path / "lite"
    code, _ = run_main(["finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                        "--batch-size", "32", "--quiet", "--seed", "3", *SAME_CHOICES, "--sparsity", "lite-residual",
                        "--memory-budget", "16", "--out", out], capsys)
    assert code == 0
    plan = json.loads((out / "config.json").read_text())["memory_plan"]
    assert plan["counted"]["peak_mb"] <= 16
    model, _ = load_checkpoint(out)
    assert has_residuals(model)
    warm, _ = load_checkpoint(tiny_warm)
    moved = [n for n, p in model.named_parameters() if "lite_residual" in n and p.abs().sum() > 0]
    assert moved, "the branches trained"
    # Frozen weights are the warmup's.
    warm_state = warm.state_dict()
    assert all(torch.equal(v, warm_state[k]) for k, v in model.state_dict().items()
               if k.endswith("weight") and "lite_residual" not in k and k in warm_state
               and k not in classifier_names(warm) and v.dim() > 1)
