"""Updaters that train one fixed set of parameters for the whole run; everything else gets
requires_grad=False, so autograd keeps no activation and computes no gradient it would need only
for them (the counted memory and backward FLOPs fall with what is frozen, not with how much):

- `classifier`: the last block alone;
- `last-k`: the last K blocks (`--last-k K`);
- `bias-norm`: every bias and normalisation parameter, and the classifier (TinyTL's choice);
- `budget`: the set a memory plan chose by what each byte buys (engine/machine/memory_plan.py),
  kept in the run's config as parameter names, so a resumed run trains the same set.
"""

from __future__ import annotations

from torch import nn

from edge_sel.errors import InputError
from edge_sel.methods.base import Updater
from edge_sel.methods.registry import UPDATERS
from edge_sel.models.blocks import named_blocks

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def classifier_names(model: nn.Module, k: int = 1) -> set[str]:
    """Parameter names of the last `k` blocks."""
    blocks = named_blocks(model)
    chosen = {id(p) for _, block in blocks[-k:] for p in block.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in chosen}


def bias_norm_names(model: nn.Module) -> set[str]:
    names = classifier_names(model)
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, NORMS):
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def sparse_names(model: nn.Module, gains: dict[str, float], share: float) -> set[str]:
    """MCUNetV3's sparse update in shape: every bias and norm and the classifier, then the weight
    tensors of whole blocks, the blocks whose gain per parameter is highest first (`gains`: parameter
    name -> expected gain, such as the warmup's Fisher information summed), while their weights hold at
    most `share` of the model's parameters. Ties go to the later block."""
    chosen = bias_norm_names(model)
    params = dict(model.named_parameters())
    owner = {id(p): i for i, (_, block) in enumerate(named_blocks(model)) for p in block.parameters()}
    by_block: dict[int, list[str]] = {}
    for n, p in params.items():
        if n not in chosen and id(p) in owner:
            by_block.setdefault(owner[id(p)], []).append(n)

    def size(names):
        return sum(params[n].numel() for n in names)
    ranked = sorted(by_block.items(), key=lambda item: (sum(gains.get(n, 0.0) for n in item[1]) / max(1, size(item[1])),
                                                        item[0]), reverse=True)
    room = share * size(params)
    for _, names in ranked:
        if size(names) <= room:
            chosen |= set(names)
            room -= size(names)
    return chosen


class FixedSet(Updater):
    saves_compute = True
    static_set = True

    def __init__(self, name: str, choose):
        self.name, self.choose = name, choose
        self.trained: set[str] = set()

    def trainable(self, model: nn.Module) -> set[str]:
        return set(self.choose(model))

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        self.trained = self.trainable(model)
        unknown = self.trained - {n for n, _ in model.named_parameters()}
        if unknown:
            raise InputError(f"--sparsity {self.name}: no parameter named {sorted(unknown)[0]!r} in the model")
        for n, p in model.named_parameters():
            p.requires_grad_(n in self.trained)
        total = sum(p.numel() for p in model.parameters())
        self.trained_share = sum(p.numel() for p in model.parameters() if p.requires_grad) / max(1, total)

    def end_epoch(self) -> dict:
        return {"grad_sparsity": 1 - self.trained_share, "frozen_frac": 1 - self.trained_share,
                "sparsity_kind": "structured", "compute_saved_by_sparsity": True,
                "trained_tensors": len(self.trained)}


def last_k(method: dict) -> FixedSet:
    k = method.get("last_k") or 1
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"--last-k must be a whole number >= 1, got {k!r}")
    return FixedSet("last-k", lambda model: classifier_names(model, k))


def budget(method: dict) -> FixedSet:
    names = method.get("trainable")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise InputError(f"trainable: must be a list of parameter names, got {names!r}")
    # Without a plan's names (the planner fills them before the updater attaches) nothing is chosen yet.
    return FixedSet("budget", lambda model: set(names or []))


def register() -> None:
    UPDATERS["classifier"] = lambda method: FixedSet("classifier", classifier_names)
    UPDATERS["last-k"] = last_k
    UPDATERS["bias-norm"] = lambda method: FixedSet("bias-norm", bias_norm_names)
    UPDATERS["budget"] = budget
    # A plain fine-tune's own choice (engine/loop/default_choice.py) names the set before the run trains.
    UPDATERS["auto"] = lambda method: FixedSet("auto", lambda model: set())
