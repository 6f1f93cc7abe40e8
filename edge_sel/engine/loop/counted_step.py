"""The step a run counts is the step it runs: the torch backend's own train_step (engine side of
core/memory.py's counter), bound to the counter's meta twin with the run's objective (cross-entropy
with its label smoothing and every penalty on the twin's weights), its BatchNorm mode, its
micro-batches, and FedProx's pull before the optimizer's step; beside it, what the run keeps while
it trains: the epoch's parameter snapshot (params_updated_frac), the penalties' Fisher weights and
source anchors (every parameter that has them, frozen ones too), FedProx's copy of the round's
weights, --keep best's copy of the best state so far. The rows are the step's: the batch and its
replayed anchors (engine/loop/step_memory.py), and beside them the local batch the trainer keeps for
its strategy.

An updater's own per-step tensors are not run on the twin: the updaters a budget allows keep none
(`--sparsity mask`, whose guilt mask copies weights and optimizer state every step, is refused under a
budget by TrainConfig.validate)."""

from __future__ import annotations

import copy

import torch

from edge_sel.backends.torch_backend import TorchBackend
from edge_sel.core.count_keys import digest, source_digest
from edge_sel.data import Batch
from edge_sel.methods import Updater
from edge_sel.methods.objective import Objective


# The backend's step as this module found it: what instruments a run's steps (a test's hook on
# TorchBackend.train_step) does not see the counter's steps on the twin.
TRAIN_STEP = TorchBackend.train_step


class _NoOptimizer:
    """What the backend steps when nothing trains (a frozen model's step has no optimizer)."""
    param_groups: list = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        pass


def twin_objective(objective, model: torch.nn.Module, twin: torch.nn.Module):
    """The run's objective on the twin: each penalty's terms on the twin's parameters, with meta
    copies of its per-parameter tensors (the live penalty's own code runs)."""
    to_twin = {id(p): q for p, q in zip(model.parameters(), twin.parameters())}
    penalties = []
    for penalty in objective.penalties:
        twin_penalty = copy.copy(penalty)
        if hasattr(penalty, "terms"):
            twin_penalty.terms = [(to_twin[id(p)], *(torch.empty_like(t, device="meta") for t in rest))
                                  for p, *rest in penalty.terms]
        penalties.append(twin_penalty)
    twin_obj = copy.copy(objective)
    twin_obj.penalties = penalties
    return twin_obj


def run_step_factory(cfg, model: torch.nn.Module, objective=None, local_rows: tuple | None = None,
                     trained_only: bool = False, keeps_best: bool = False):
    """counter.step for a run of `cfg` on `model` minimising `objective` (None: cross-entropy with the
    run's label smoothing): (twin, optimizer) -> (run(x, y, micro_batch), kept tensors). `local_rows`:
    the shape of the local batch's images, alive beside a step whose rows are joined with replayed ones.
    `trained_only`: the updater's set is fixed, so the epoch's snapshot holds only what trains.
    `keeps_best`: --keep best holds a copy of the best state so far beside the model (what can move:
    what trains, or every parameter, and every buffer: engine/evaluation/keep.py)."""
    mu = float(cfg.proximal_mu or 0.0)
    objective = objective or Objective(cfg.label_smoothing)

    def make(twin: torch.nn.Module, optimizer):
        twin_obj = twin_objective(objective, model, twin)
        params = list(twin.parameters())
        # The epoch's snapshot (engine/loop/progress.py): what trains, or every parameter.
        kept = [torch.empty_like(p) for p in params if p.requires_grad or not trained_only]
        if keeps_best:
            params_named = {n for n, _ in twin.named_parameters()}
            kept += [torch.empty_like(t) for n, t in twin.state_dict(keep_vars=True).items()
                     if n not in params_named or t.requires_grad or not trained_only]
        if local_rows is not None:          # the trainer's local batch, kept for its strategy beside the joined one
            kept.append(torch.empty(local_rows, device="meta"))
        for penalty in twin_obj.penalties:
            kept += [t for _, *rest in getattr(penalty, "terms", ()) for t in rest]
        step_optimizer = optimizer if optimizer is not None else _NoOptimizer()
        hooks = []
        if mu > 0:          # FedProx (fleet/local.py proximal_pull): the round's weights, pulled towards before each step
            anchors = {id(p): torch.empty_like(p) for p in params}
            kept += list(anchors.values())
            if optimizer is not None:
                def pull(opt, args, kwargs):
                    with torch.no_grad():
                        for p in (p for g in opt.param_groups for p in g["params"]):
                            if p.grad is not None:
                                p.grad.add_(p.detach() - anchors[id(p)], alpha=mu)
                hooks.append(optimizer.register_step_pre_hook(pull))     # this count's only (the optimizer is reused)
        backend = TorchBackend(twin, step_optimizer, Updater(), torch.device("meta"), amp=False,
                               precision=("fp32", "fp32"), objective=twin_obj)
        # The counter put the step's BatchNorm layers in eval mode where its shape freezes their statistics.
        frozen = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.training for m in twin.modules())

        def run(x, y, micro_batch: int):
            backend.micro_batch = micro_batch
            backend.bn_mode = "eval" if frozen else "train"
            index = torch.zeros(len(y), dtype=torch.long, device="meta")
            try:
                TRAIN_STEP(backend, 0, Batch(index, index, x, y, None))
            finally:
                for hook in hooks:
                    hook.remove()
        return run, kept
    make.key = step_key(objective, model, mu > 0, local_rows, trained_only, keeps_best)     # None: never kept
    return make


def step_key(objective, model: torch.nn.Module, proximal: bool, local_rows: tuple | None,
             trained_only: bool = False, keeps_best: bool = False) -> str | None:
    """What the counted step's bytes depend on besides the model and the shape (core/count_keys.py):
    this step's code, the objective's kind and each penalty's tensors, FedProx's copy, the local batch."""
    names = {id(p): n for n, p in model.named_parameters()}
    penalties = [(f"{type(p).__module__}.{type(p).__qualname__}",
                  [(names.get(id(q)), *((tuple(t.shape), t.dtype, t.stride()) for t in rest))
                   for q, *rest in getattr(p, "terms", ())]) for p in objective.penalties]
    modules = {__name__, TorchBackend.__module__, Updater.__module__, Batch.__module__, type(objective).__module__,
               *(type(p).__module__ for p in objective.penalties)}
    code = source_digest(modules)
    if code is None:
        return None
    return digest(code, type(objective).__qualname__, getattr(objective, "label_smoothing", None),
                  proximal, local_rows, trained_only, penalties, *(("keeps_best",) if keeps_best else ()))
