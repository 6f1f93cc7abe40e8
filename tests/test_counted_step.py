"""The step a budgeted run counts is the step it runs: for each kind of step (plain, with the EWC
penalty, with replayed anchors, in micro-batches, under FedProx), what saved-tensor hooks see over a
real step of the run equals what the counter says autograd saves, the plan counts the rows the run
trains, and the copies the run keeps beside its model (the epoch's snapshot, the penalty's Fisher
weights and anchors, FedProx's copy of the weights) are counted."""

import json

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from helpers import PINNED_CHOICES, digits_warmup_with_memory
from edge_sel.backends.torch_backend import TorchBackend
from edge_sel.config import TrainConfig
from edge_sel.core.memory import MiB
from edge_sel.engine.evaluation.keep import ModelChoice
from edge_sel.engine.runs import run as run_module
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.fleet.local import proximal_pull
from edge_sel.methods.update.fixed_sets import classifier_names
from edge_sel.models import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    return digits_warmup_with_memory(tmp_path_factory.mktemp("counted") / "warm")


def hooked_steps(monkeypatch) -> list[tuple[int, int]]:
    """(rows, bytes autograd saved) of every real step: distinct storages packed by saved-tensor
    hooks over the whole step, less the parameters, buffers, the batch and the penalties' own tensors
    (they exist before the step, as the counter's weights, batch and kept copies do)."""
    steps, real = [], TorchBackend.train_step

    def train_step(self, step, batch):
        if self.device.type == "meta":      # the counter's own step on its twin
            return real(self, step, batch)
        before = [*self.model.parameters(), *self.model.buffers(), batch.x, batch.y]
        before += [t for p in self.objective.penalties for _, *rest in getattr(p, "terms", ()) for t in rest]
        outside = {StorageWeakRef(t.untyped_storage()).cdata for t in before}
        held = {}       # storages held until the step ends: no address is reused within it

        def pack(t):
            storage = t.untyped_storage()
            key = StorageWeakRef(storage).cdata
            if key not in outside:
                held[key] = storage
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = real(self, step, batch)
        steps.append((len(batch.y), sum(s.nbytes() for s in held.values())))
        return out

    monkeypatch.setattr(TorchBackend, "train_step", train_step)
    return steps


def run(warm, out, monkeypatch, proximal_mu=0.0, **options):
    steps = hooked_steps(monkeypatch)
    kept_best = held_best_copies(monkeypatch)
    if proximal_mu:     # FedProx's pull as a fleet round runs it, around the whole fine-tune
        real = run_module.train_model

        def train_model(phase, model, *args, **kwargs):
            with proximal_pull(model, proximal_mu):
                return real(phase, model, *args, **kwargs)
        monkeypatch.setattr(run_module, "train_model", train_model)
    fedprox = {"proximal_mu": proximal_mu} if proximal_mu else {}
    # A validation subset given, so the run keeps its best epoch's copy (a run of 96 digits could not
    # afford validation sized to it, and would keep its last epoch and no copy).
    cfg = TrainConfig(epochs=1, batch_size=32, seed=1, memory_budget_mb=1000.0, val_subset=100,
                      **{"sparsity": "none", **PINNED_CHOICES, **options, **fedprox})
    run_module.finetune(warm, DataOptions("digits", shard="1/2", subset=96), cfg, out, quiet=True)
    (record,) = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("epoch") == 0]
    return steps, record, json.loads((out / "config.json").read_text()), kept_best


def held_best_copies(monkeypatch) -> list[int]:
    """Bytes of --keep best's copy after each time the run kept a state."""
    held, real = [], ModelChoice._keep

    def keep(self, state):
        real(self, state)
        held.append(sum(t.numel() * t.element_size() for t in self.weights.values()))
    monkeypatch.setattr(ModelChoice, "_keep", keep)
    return held


MICRO = {"budget_mb": 1000.0, "batch_size": 32, "micro_batch": 8, "recompute": [], "bn_statistics": "train",
         "counted": {}, "asked_mb": 0.0}


@pytest.mark.parametrize("kind,options", [("plain", {}), ("ewc", {"ewc": 1.0}), ("replay", {"replay": 0.5}),
                                          ("micro-batches", {"memory_plan": MICRO}),
                                          ("fedprox", {"proximal_mu": 0.1}), ("classifier", {"sparsity": "classifier"})])
def test_a_budgeted_step_counts_what_saved_tensor_hooks_see_over_the_real_step(warm, tmp_path, monkeypatch,
                                                                                kind, options):
    """On the old counter: the EWC penalty's saved differences and the micro-batches after the second
    went uncounted (edgecnn on digits: micro-batches of 8 counted half of the step's saved bytes), the
    plan counted 32 rows where replay trained 48, and nothing the run keeps beside its model counted."""
    steps, record, config, kept_best = run(warm, tmp_path / kind, monkeypatch, **options)
    rows, saved = max(steps)
    assert record["memory_step_samples"] == rows == (48 if kind == "replay" else 32)
    assert record["memory_saved_mb"] == pytest.approx(saved / MiB, rel=0.01, abs=0.002)
    plan = config["memory_plan"]
    if kind != "micro-batches":        # planned, not given: the plan counts the most rows a step can carry
        # (a trailing sample the loader merges, a row a gate left waiting), at least the step the run took
        assert plan["batch_size"] == rows + 2 and plan["counted"]["peak_mb"] >= record["memory_counted_mb"]
    weights = record["memory_weights_mb"]         # edgecnn's parameters and (few) buffers
    start = load_checkpoint(warm)[0]
    params = sum(p.numel() * p.element_size() for p in start.parameters()) / MiB
    buffers = sum(b.numel() * b.element_size() for b in start.buffers()) / MiB
    best = params + buffers         # --keep best (the default) holds what can move: every tensor
    if kind == "classifier":        # a set fixed for the run: the epoch keeps a copy of what trains alone
        trained = dict(start.named_parameters())
        params = sum(trained[n].numel() * trained[n].element_size() for n in classifier_names(start)) / MiB
        best = params + buffers     # a fixed set's run: the set and the buffers
        end = dict(load_checkpoint(tmp_path / kind)[0].named_parameters())
        moved = sum(int((end[n] != p).sum()) for n, p in trained.items())
        assert 0 < record["params_updated_frac"] == pytest.approx(moved / sum(p.numel() for p in trained.values()))
    copies = {"plain": 1, "replay": 1, "micro-batches": 1, "fedprox": 2, "ewc": 3, "classifier": 1}[kind]
    # Beside a replayed step the trainer keeps its local batch of 32 digits (1 x 8 x 8 floats each).
    local = 32 * 8 * 8 * 4 / MiB if kind == "replay" else 0.0
    assert record["memory_kept_mb"] == pytest.approx(copies * params + best + local, abs=0.001)
    assert kept_best and all(b / MiB == pytest.approx(best, abs=1e-6) for b in kept_best)     # the copy it held
    if kind != "micro-batches":     # planning is part of the first epoch's cost
        assert record["memory_plan_counts"] + record["memory_plan_counts_read"] >= 1
        assert record["wall_s"] >= record["memory_plan_wall_s"] > 0
    if kind == "plain":     # beside the evaluation: momentum, the last gradients, the epoch's copy, the kept best
        assert record["memory_eval_beside_mb"] == pytest.approx(3 * params + best, rel=0.01)


def test_fedprox_pull_is_counted_where_the_optimizer_steps():
    """Killed the mutant that leaves FedProx's pull out of the counted step (its copy of the round's
    weights still counted as kept): the pull's difference w - w_global, one parameter's size, is alive
    at the optimizer's step, which is the peak of a step whose parameters outweigh its activations."""
    from types import SimpleNamespace

    from edge_sel.core.memory import MemoryCounter, StepShape
    from edge_sel.engine.loop.counted_step import run_step_factory
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1024), torch.nn.Linear(1024, 10))
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    step_alone = {}
    for mu in (0.0, 0.5):
        cfg = SimpleNamespace(proximal_mu=mu, label_smoothing=0.0)
        counter = MemoryCounter(model, [1, 8, 8], lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                                step=run_step_factory(cfg, model))
        count = counter.count(StepShape(batch_size=2))
        step_alone[mu] = count.peak - count.kept
    # About one parameter more (the optimizer's own temporaries, counted in both, overlap part of it);
    # without the pull, nothing more.
    assert step_alone[0.5] - step_alone[0.0] >= largest // 2
