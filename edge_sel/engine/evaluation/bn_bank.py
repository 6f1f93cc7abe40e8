"""`--bn-conditions K`: BatchNorm statistics kept per condition, chosen from the input's own statistics.

One set of running statistics cannot serve a clean and a noisy camera at once: every night pulls it
to tonight's condition, and the clean images pay. The weights stay shared; the statistics are kept
per condition the device has seen, each with a few of that condition's images so that it can be
re-estimated whenever the weights change (no label is used for that; the labels are kept for promote
to judge a candidate on what the deployed model serves). The source's comes first: the statistics it
was trained with while the weights are the source's, else estimated on the replay anchors.

Which condition a batch is in is read from the batch itself, before the first layer: per colour
channel the mean and variance of the pixels and of a 3 x 3 Laplacian of them (noise, blur,
contrast and fog move these; which classes are in view barely does), against each condition's.
Measured on CIFAR-10 (shard 1/2 draws, 256 images each): clean draws, a four-class draw and a
label-noise draw lie within 0.03 of each other and of the source's anchors; Gaussian noise,
fog and clean lie 1.0-3.8 apart (benchmarks/condition_distances.py); one batch of 64 clean images lies 0.04-0.09 from the clean ones.

A run (engine/loop/trainer.py calls this module):
1. at its start, tonight's images are matched against the start model's conditions: the nearest
   within `--bn-condition-radius` takes tonight's images (the source keeps its anchors), otherwise
   tonight is a new condition; then the least recently matched ones make room until K are kept
   (never the source), also after a match, so a lowered K trims a bank kept under a larger one;
2. before every evaluation, every condition's statistics are re-estimated for the current weights
   on its images (forward passes, counted in `flops_eval` as `flops_bn_bank`), and each evaluation
   batch is normalised with the statistics of the condition it is nearest to;
3. the output model is written with its bank (core/bn_bank.py), which promote deploys with it.

Training itself is untouched: batches train in train mode (their own statistics) and the model's own
running statistics are restored after every evaluation, so strategies, scoring and an exact resume
see what they would without the bank.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edge_sel.config import TrainConfig
from edge_sel.core.bn_bank import BANK_FILE, SavedCondition, read_bank, write_bank
from edge_sel.data import IndexedDataset
from edge_sel.engine.evaluation.bn_adapt import batchnorm_layers, reestimate_bn
from edge_sel.errors import InputError
from edge_sel.predict.conditions import (FEATURES_PER_CHANNEL, ConditionChooser, check_image_size, distance_flops,
                                         feature_flops, image_features, laplacian, laplacian_flops_per_output)
from edge_sel.predict.statistics import StatisticsSwitch, floating_dtype, stats_on

SOURCE = "source"
EPS = 1e-5


def named_batchnorm(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# Between 0.03 (same condition) and 0.9 (another), measured as above; --bn-condition-radius.
DEFAULT_RADIUS = TrainConfig.bn_condition_radius


def distance(mean: torch.Tensor, var: torch.Tensor, ref_mean: torch.Tensor, ref_var: torch.Tensor) -> torch.Tensor:
    """How far per-channel statistics (mean, var) are from each row of (ref_mean, ref_var): the mean
    over channels of the squared standardised shift of the mean plus the squared log ratio of the
    variances. 0 for identical statistics."""
    shift = (mean - ref_mean) ** 2 / (ref_var + EPS)
    spread = (torch.log(var + EPS) - torch.log(ref_var + EPS)) ** 2
    return (shift + spread).mean(dim=-1)


def fingerprint(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel of a normalised image batch, the mean and variance of its pixels and of their
    3 x 3 Laplacian (2C numbers each)."""
    x = x.float()
    edges = laplacian(x)
    return (torch.cat([x.mean((0, 2, 3)), edges.mean((0, 2, 3))]),
            torch.cat([x.var((0, 2, 3), unbiased=False), edges.var((0, 2, 3), unbiased=False)]))


def fingerprint_flops(input_shape: list[int]) -> int:
    """FLOPs of one image's part of a fingerprint: the Laplacian's stencil per output and, for
    pixels and Laplacian outputs, a mean and a variance counted as a sum, a square and a sum of
    squares per element."""
    c, h, w = input_shape
    check_image_size(h, w)
    inner = c * (h - 2) * (w - 2)
    return laplacian_flops_per_output() * inner + 3 * (c * h * w + inner)


def images_fingerprint(images: torch.Tensor, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return fingerprint((images.float() / 255 - m) / s)


def weights_key(model: nn.Module, state: dict | None = None) -> str:
    """Which weights statistics were estimated for (BatchNorm buffers excluded): the model's
    parameters, or those of `state` (a state dict of the same model) in the model's order."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        t = p if state is None else state[name]
        h.update(t.detach().float().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Condition:
    name: str
    images: torch.Tensor                             # uint8 N x C x H x W: what its statistics are estimated on
    stats: dict = field(default_factory=dict)       # layer -> (mean, var)
    nights: int = 1
    info: dict = field(default_factory=dict)
    fingerprint: tuple | None = None                 # its images' fingerprint (mean, var): what a batch is matched with
    labels: torch.Tensor | None = None               # int64 N: its images' labels, what promote judges it by


class ConditionBank:
    def __init__(self, conditions: list[Condition], mean, std, radius: float, match: dict,
                 source: tuple[str, dict] | None = None):
        self.conditions = conditions
        # The source weights' key and their own running statistics: while the weights are the
        # source's, its condition keeps the statistics it was trained with (nothing to estimate).
        self.source = source
        self.mean, self.std = mean, std
        self.radius = radius
        self.match = match                 # how tonight was matched (for the summary)
        self.refreshed_for: str | None = None
        self.chosen: list[int] = [0] * len(conditions)   # images normalised with each, since the last count
        self._chooser: ConditionChooser | None = None

    # -- statistics -------------------------------------------------------------------------------
    def refresh(self, model: nn.Module, flops, batch_size: int = 256,
                memory_format=torch.contiguous_format) -> dict:
        """Every condition's statistics re-estimated for the model's current weights on its images;
        the model's own running statistics are left as they were. Returns the samples and counted
        FLOPs of the forward passes."""
        own = save_buffers(model)
        samples, counted = 0, 0
        try:
            device = next(model.parameters()).device
            key = weights_key(model)
            for c in self.conditions:
                if c.name == SOURCE and self.source is not None and self.source[0] == key:
                    c.stats = {name: (mean.clone(), var.clone()) for name, (mean, var) in self.source[1].items()}
                    continue
                n = len(c.images)
                ds = IndexedDataset(c.images.to(device), torch.zeros(n, dtype=torch.long, device=device),
                                    torch.arange(n, device=device), [], name=c.name)
                sizes = reestimate_bn(model, ds, torch.arange(n, device=device), self.mean, self.std,
                                      batch_size, memory_format)
                c.stats = {n: (m.running_mean.detach().clone(), m.running_var.detach().clone())
                           for n, m in named_batchnorm(model)}
                samples += sum(sizes)
                counted += sum(flops.eval_batch(s) for s in sizes)
        finally:
            load_buffers(model, own)
        self.refreshed_for = key
        return {"samples": samples, "flops": counted}

    def distances(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """How far a set of images' fingerprint is from each condition's (matching a night's draw)."""
        return distances(self.conditions, mean, var)

    def chooser(self) -> ConditionChooser:
        """Which condition each image takes (edge_sel/predict/conditions.py), fitted on the
        conditions' kept images; made once, when first asked for."""
        if self._chooser is None:
            self._chooser = ConditionChooser.from_images([c.name for c in self.conditions],
                                                         [c.images for c in self.conditions], self.mean, self.std)
        return self._chooser

    def choose(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's condition in a batch of normalised images, the batch taken as a set."""
        choice = self.chooser().choose_batch(image_features(x))
        for k in choice.tolist():
            self.chosen[k] += 1
        return choice

    def take_selected(self) -> int:
        """Images whose condition was chosen since the last call (their features are counted FLOPs)."""
        n, self.chosen = sum(self.chosen), [0] * len(self.conditions)
        return n

    def choice_flops(self, input_shape) -> int:
        """One image's share of choosing: its features and its distances to every condition."""
        return feature_flops(input_shape) + distance_flops(len(self.conditions), FEATURES_PER_CHANNEL * input_shape[0])

    @contextmanager
    def selecting(self, model: nn.Module):
        """Inside: in eval mode, each image is normalised with its own condition's statistics."""
        handle = self.attach(model)
        try:
            yield self
        finally:
            handle.remove()

    def attach(self, model: nn.Module) -> "Attached":
        """Route from now on (a deployed model's bank): in eval mode the model's forward normalises
        each image with its condition's statistics, lent for the pass (the model's own buffers and
        state dict stay its own). Returns a handle whose remove() restores the plain forward."""
        return Attached(model, self)

    # -- records ----------------------------------------------------------------------------------
    def to_saved(self) -> list[SavedCondition]:
        return [SavedCondition(c.name, c.images.cpu(), c.stats, c.nights, c.info, c.fingerprint,
                               None if c.labels is None else c.labels.cpu()) for c in self.conditions]

    def describe(self) -> dict:
        return {"conditions": [{"name": c.name, "images": len(c.images), "nights": c.nights, **c.info}
                               for c in self.conditions],
                "tonight": self.match, "radius": self.radius, "file": BANK_FILE}


class Attached:
    """A model whose eval-mode forward routes each image to its condition's statistics."""

    def __init__(self, model: nn.Module, bank: ConditionBank):
        self.model, self.bank = model, bank
        switch = StatisticsSwitch(model)
        plain = type(model).forward.__get__(model)
        on_device: dict = {}

        def routed(*args, **kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            if model.training or x.device.type == "meta":     # training, or a FLOP count's shape-only pass
                return plain(*args, **kwargs)
            key = (x.device, floating_dtype(model))
            if key not in on_device:
                on_device[key] = [stats_on(c.stats, *key) for c in bank.conditions]
            return switch.forward(lambda xs: plain(xs), x, bank.choose(x), on_device[key])
        model.forward = routed

    def remove(self) -> None:
        self.model.__dict__.pop("forward", None)


def distances(conditions: list[Condition], mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """How far a fingerprint (mean, var) is from each condition's."""
    ref_mean = torch.stack([c.fingerprint[0] for c in conditions]).to(mean.device)
    ref_var = torch.stack([c.fingerprint[1] for c in conditions]).to(mean.device)
    return distance(mean, var, ref_mean, ref_var)


def save_buffers(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Every BatchNorm layer's buffers (running statistics and batch count)."""
    return [{k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None}
            for m in batchnorm_layers(model)]


def load_buffers(model: nn.Module, saved) -> None:
    with torch.no_grad():
        for m, buffers in zip(batchnorm_layers(model), saved):
            for k, b in buffers.items():
                getattr(m, k).copy_(b)


def check_bank_model(model: nn.Module) -> None:
    if not named_batchnorm(model):
        raise InputError("--bn-conditions: the model has no BatchNorm layers (nothing to keep per condition)")
    if any(m.running_mean is None for _, m in named_batchnorm(model)):
        raise InputError("--bn-conditions: the model's BatchNorm layers keep no running statistics")


def build_bank(start: Path, model: nn.Module, input_shape: list[int], mean, std, train: IndexedDataset,
               replay: IndexedDataset, keep: int, images: int, radius: float, seed: int,
               run: str, source_state: dict | None = None) -> tuple[ConditionBank, dict]:
    """The run's bank: the start checkpoint's conditions (the source alone, on the replay anchors,
    when it has none) with tonight's images matched or added (see the module's docstring). Their
    statistics are estimated at the run's first evaluation. Returns the bank and the matching's
    counted cost (the fingerprints of tonight's images and of conditions new to the bank)."""
    check_bank_model(model)
    check_image_size(*input_shape[-2:])
    saved = read_bank(start, input_shape, model)
    draw = torch.Generator().manual_seed(seed + 15485863)       # its own stream: the run's stays as it was
    picked = torch.randperm(len(train), generator=draw)[:images]
    tonight = train.pixels(picked.to(train.images.device)).cpu()
    tonight_labels = train.labels[picked.to(train.labels.device)].cpu()
    if saved is None:
        anchors = replay.images.cpu()
        conditions = [Condition(SOURCE, anchors, nights=1, info={"first_run": "source", "last_seen": 0},
                                fingerprint=images_fingerprint(anchors, mean, std), labels=replay.labels.cpu())]
    else:
        conditions = [Condition(s.name, s.images, dict(s.stats), s.nights, dict(s.info), s.fingerprint, s.labels)
                      for s in saved]
    fingerprinted = len(tonight) + (len(conditions[0].images) if saved is None else 0)
    tonight_print = images_fingerprint(tonight, mean, std)
    dist = distances(conditions, *tonight_print)
    k = int(torch.argmin(dist))
    generation = 1 + max(int(c.info.get("last_seen", 0)) for c in conditions)
    match = {"distances": {c.name: round(float(d), 4) for c, d in zip(conditions, dist)},
             "nearest": conditions[k].name}
    if float(dist[k]) <= radius:
        c = conditions[k]
        if c.name != SOURCE:                  # the source keeps its anchors; another takes tonight's newest images
            c.images, c.fingerprint, c.labels = tonight, tonight_print, tonight_labels
        c.nights += 1
        c.info["last_seen"] = generation
        match.update(condition=c.name, new=False)
    else:
        taken = {c.name for c in conditions}
        n = 1
        while f"condition-{n}" in taken:
            n += 1
        conditions.append(Condition(f"condition-{n}", tonight, nights=1,
                                    info={"first_run": run, "last_seen": generation}, fingerprint=tonight_print,
                                    labels=tonight_labels))
        match.update(condition=f"condition-{n}", new=True)
    # K holds on a match too: a bank kept under a larger K shrinks when K is lowered.
    while len(conditions) > keep:             # the least recently matched makes room (never the source)
        oldest = min(conditions[1:], key=lambda c: c.info.get("last_seen", 0))
        conditions.remove(oldest)
        match.setdefault("dropped", []).append(oldest.name)
    bank = ConditionBank(conditions, mean, std, radius, match, source_statistics(model, source_state))
    bank.chooser()                            # described once, here, where its cost is charged
    described = sum(len(c.images) for c in conditions)
    return bank, {"samples": fingerprinted + described,
                  "flops": fingerprinted * fingerprint_flops(input_shape) + described * feature_flops(input_shape)}


def write_bank_for(bank: ConditionBank | None, model: nn.Module, out: Path) -> int | None:
    """Write the run's bank beside its output model when its statistics are that model's (a run
    stopped mid-epoch has none to write); returns the file's bytes, None when not written."""
    if bank is None or bank.refreshed_for != weights_key(model):
        return None
    return write_bank(Path(out) / BANK_FILE, bank.to_saved())


def attach_saved_bank(model: nn.Module, directory: Path, card) -> ConditionBank | None:
    """A deployed model's bank, selecting in eval mode from now on (promote, benchmarks, inference):
    the statistics as saved, for the weights saved beside them. None when the checkpoint has none."""
    saved = read_bank(directory, list(card.input_shape), model)
    if saved is None:
        return None
    conditions = [Condition(s.name, s.images, dict(s.stats), s.nights, dict(s.info), s.fingerprint, s.labels)
                  for s in saved]
    bank = ConditionBank(conditions, card.mean, card.std, 0.0, {})
    bank.attach(model)
    return bank


def run_bank_for(model: nn.Module, run_dir: Path, card, source_state: dict | None = None) -> ConditionBank | None:
    """A run's bank (its conditions and their images, as written beside its output model) to be
    re-estimated for other weights: how promote judges the deployed model the way the run judged
    its start (the same conditions, tonight's included, each estimated for those weights on the
    same images). `source_state`: the source weights, whose condition then keeps their own
    statistics, as in the run. None when the run wrote no bank."""
    saved = read_bank(run_dir, list(card.input_shape), model)
    if saved is None:
        return None
    conditions = [Condition(s.name, s.images, {}, s.nights, dict(s.info), s.fingerprint, s.labels) for s in saved]
    return ConditionBank(conditions, card.mean, card.std, 0.0, {}, source_statistics(model, source_state))


def source_statistics(model: nn.Module, source_state: dict | None) -> tuple[str, dict] | None:
    """The source weights' key and their own running statistics (ConditionBank.source)."""
    if source_state is None:
        return None
    return (weights_key(model, source_state),
            {n: (source_state[f"{n}.running_mean"], source_state[f"{n}.running_var"]) for n, _ in named_batchnorm(model)})


def make_bank(cfg, start: Path, model: nn.Module, card, train: IndexedDataset, memory,
              run: str) -> tuple[ConditionBank | None, dict | None]:
    """The run's bank under `--bn-conditions K` (None, None without it)."""
    if not cfg.bn_conditions:
        return None, None
    return build_bank(Path(start), model, list(card.input_shape), card.mean, card.std, train, memory.replay,
                      cfg.bn_conditions, cfg.bn_condition_images, cfg.bn_condition_radius, cfg.seed, run,
                      memory.source)
