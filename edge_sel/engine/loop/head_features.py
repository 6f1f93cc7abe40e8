"""The classifier's input, computed once for every trial that trains the classifier alone with the
BatchNorm statistics frozen: every weight before it is fixed and runs as in evaluation, so each image's
features are the same at every step of every such recipe. Its steps then run the classifier (and the
dropout before it) on those features, and its scoring too. A trial that trains anything earlier, or
re-estimates the statistics, runs the whole model.

Used only where it is the same computation: the model's last block is its classifier, nothing between
the last weight before it and the classifier but pooling, flattening and dropout (re-drawn here with
the same random stream), no stochastic depth before it, and a step on the features gives the logits
the whole model's step gives (checked on two images before any trial uses it)."""

from __future__ import annotations

import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.core.micro_batches import bounds
from edge_sel.methods.update.fixed_sets import classifier_names
from edge_sel.models.blocks import named_blocks

PASS_ROWS = 128          # images a feature pass computes at a time


class HeadFeatures:
    def __init__(self, model, head_name: str, head: nn.Module, dropouts: list[float], served: set[int], flops,
                 allowance=None):
        self.model, self.head_name, self.head, self.dropouts = model, head_name, head, dropouts
        self.served = served
        self.model_flops = flops
        self.flops = 0                    # the feature passes' counted FLOPs (the whole model's forward)
        self.train_features = self.held_features = self.inverse = None
        self.head_flops = None
        self.allowance = allowance        # checked before each feature pass (core/evidence.py)

    @classmethod
    def for_candidates(cls, model, candidates, images, flops, allowance=None) -> "HeadFeatures | None":
        head_params = classifier_names(model)
        served = {id(c) for c in candidates if c.trainable <= head_params and c.shape is not None
                  and c.shape.bn_statistics == "frozen" and not c.shape.recompute}
        if not served:
            return None
        found = tail_of(model, images.held_x[:1])
        if found is None:
            return None
        head_name, head, dropouts = found
        features = cls(model, head_name, head, dropouts, served, flops, allowance)
        return features if features.same_as_the_model(images) else None

    def serves(self, c) -> bool:
        return id(c) in self.served

    def describe(self) -> dict:
        return {"head": self.head_name, "dropout": self.dropouts, "flops": self.flops,
                "images": 0 if self.inverse is None else int(len(self.train_features) + len(self.held_features))}

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        seen = []
        hook = self.head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            hook.remove()
            self.model.train(was)
        return seen[0]

    def _ready(self, images) -> int:
        """Computes the features once; returns the FLOPs that took (0 after the first call): charged to the
        trial that first needed them."""
        if self.inverse is not None:
            return 0
        unique, self.inverse = torch.unique(images.train, return_inverse=True)
        parts = []
        pass_j = 0.0
        for lo, hi in bounds(len(unique), PASS_ROWS):
            if self.allowance is not None:      # at what the pass before cost
                self.allowance.check(pass_j)
                before = self.allowance.spent()[0]
            x, _ = images.at(unique[lo:hi])
            parts.append(self._features(x))
            self.flops += self.model_flops.eval_batch(hi - lo)
            if self.allowance is not None:
                pass_j = self.allowance.spent()[0] - before
        self.train_features = torch.cat(parts)
        self.held_features = torch.cat([self._features(images.held_x[lo:hi])
                                        for lo, hi in bounds(len(images.held_y), PASS_ROWS)])
        self.flops += sum(self.model_flops.eval_batch(hi - lo) for lo, hi in bounds(len(images.held_y), PASS_ROWS))
        self.head_flops = FlopCounter(self.head, list(self.train_features.shape[1:]))
        return self.flops

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        for p in self.dropouts:
            x = nn.functional.dropout(x, p, training=True)
        return self.head(x)

    def step(self, model, images, k: int, rows: int, optimizer, losses) -> int:
        """Step `k` of a served trial on the features; returns its counted FLOPs (the feature passes'
        too, where this step needed them first)."""
        first = self._ready(images)
        picked = self.inverse[k * rows:(k + 1) * rows]
        y = images.labels(images.train[k * rows:(k + 1) * rows])
        optimizer.zero_grad(set_to_none=True)
        (losses(self._logits(self.train_features[picked]), y).sum() / len(y)).backward()
        optimizer.step()
        return first + sum(self.head_flops.train_step(len(y)))

    def score(self, model, images, losses) -> tuple[torch.Tensor, float, int]:
        first = self._ready(images)
        was = self.head.training
        self.head.eval()
        try:
            with torch.no_grad():
                out = self.head(self.held_features).float()
        finally:
            self.head.train(was)
        return ((out.argmax(1) == images.held_y).cpu(), float(losses(out, images.held_y).sum()),
                first + self.head_flops.eval_batch(len(images.held_y)))

    def same_as_the_model(self, images) -> bool:
        """A training-mode step's logits from the features equal the whole model's, dropout included
        (two held-out images, frozen statistics, the same random stream)."""
        from edge_sel.backends.torch_backend import freeze_batchnorm_stats
        x = images.held_x[:2]
        was = self.model.training
        state = torch.random.get_rng_state()
        try:
            features = self._features(x)
            self.model.train()
            freeze_batchnorm_stats(self.model)
            with torch.no_grad():
                torch.manual_seed(0)
                whole = self.model(x)
                torch.manual_seed(0)
                ours = self._logits(features)
        finally:
            torch.random.set_rng_state(state)
            self.model.train(was)
        return whole.shape == ours.shape and torch.allclose(whole, ours, rtol=1e-4, atol=1e-5)


def tail_of(model, x: torch.Tensor) -> tuple[str, nn.Module, list[float]] | None:
    """(the classifier's name, module, the dropout rates applied to its input) where the model's last
    block is called once, after every other module that holds a weight, with only parameter-free
    modules between (dropouts last); else None."""
    blocks = named_blocks(model)
    if not blocks:
        return None
    head_name, head = blocks[-1]
    inside = {id(m) for m in head.modules()}
    if any(float(getattr(m, "drop_path_rate", 0) or 0) > 0 for m in model.modules()):
        return None
    calls = []
    hooks = [m.register_forward_hook(lambda module, args, out: calls.append(module))
             for m in model.modules() if not list(m.children()) or m is head]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    at = [i for i, m in enumerate(calls) if m is head]
    if len(at) != 1:
        return None
    before = [m for m in calls[:at[0]] if id(m) not in inside]
    weighted = [i for i, m in enumerate(before) if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))]
    tail = before[weighted[-1] + 1:] if weighted else before
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in before[:len(before) - len(tail)]):
        return None         # dropout among the fixed weights: their features differ step to step
    kinds = [isinstance(m, nn.Dropout) for m in tail]
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and not isinstance(m, nn.Dropout) for m in tail) \
            or kinds != sorted(kinds):          # plain dropout only, and after everything else
        return None
    return head_name, head, [float(m.p) for m in tail if isinstance(m, nn.Dropout)]

