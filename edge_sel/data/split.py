"""Deterministic, stratified selections of a dataset: val split, shards, subsets, caps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge_sel.data.dataset import IndexedDataset, Splits
from edge_sel.errors import InputError


def _per_class_positions(labels: torch.Tensor, num_classes: int, seed: int) -> list[torch.Tensor]:
    """Positions of each class, in a seeded random order that does not depend on anything else."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    shuffled = labels[perm]
    return [perm[shuffled == c] for c in range(num_classes)]


def stratified_split(ds: IndexedDataset, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (rest, held_out) with `fraction` of every class held out (at least one if possible)."""
    rest, held = [], []
    for pos in _per_class_positions(ds.labels.cpu(), ds.num_classes, seed):
        k = int(round(len(pos) * fraction))
        if fraction > 0 and len(pos) > 1:
            k = max(1, min(k, len(pos) - 1))
        held.append(pos[:k])
        rest.append(pos[k:])
    return torch.cat(rest).sort().values, torch.cat(held).sort().values


def stratified_take(ds: IndexedDataset, total: int | None = None, per_class: int | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Positions of a class-balanced selection of `total` samples, or at most `per_class` per class."""
    pools = _per_class_positions(ds.labels.cpu(), ds.num_classes, seed)
    if per_class is not None:
        pools = [p[:per_class] for p in pools]
    if total is not None:
        n = sum(len(p) for p in pools)
        if total < n:
            # Proportional allocation, remainders to the largest pools, so class shares survive.
            quotas = [len(p) * total // n for p in pools]
            order = sorted(range(len(pools)), key=lambda c: -(len(pools[c]) * total % n))
            for c in order[: total - sum(quotas)]:
                quotas[c] += 1
            pools = [p[:q] for p, q in zip(pools, quotas)]
    return torch.cat(pools).sort().values


def shard(ds: IndexedDataset, k: int, n: int, seed: int) -> torch.Tensor:
    """Positions of stratified shard k of n (0-based); shards are disjoint and cover the dataset."""
    parts = []
    for pos in _per_class_positions(ds.labels.cpu(), ds.num_classes, seed):
        parts.append(pos[k::n])
    return torch.cat(parts).sort().values


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard: expected K/N such as 0/2, got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise InputError(f"--shard: need 0 <= K < N, got {text!r}")
    return k, n


@dataclass(frozen=True)
class _Pool:
    """The labels of a selection of a dataset's samples: what the stratified draws read, so that
    the shard and the subset are chosen without copying any image."""
    labels: torch.Tensor
    num_classes: int


@dataclass(frozen=True)
class SplitPositions:
    """Positions into the training source (train, val) and into the test source (test)."""
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def split_positions(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                    val_fraction: float = 0.1, shard_kn: tuple[int, int] | None = None, subset: int | None = None,
                    per_class_cap: int | None = None, split_seed: int = 0, subset_seed: int | None = None,
                    test_subset: int | None = None) -> SplitPositions:
    """make_splits' selections from the labels alone (see there)."""
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    train_labels, test_labels = train_labels.cpu(), test_labels.cpu()
    train, val = stratified_split(_Pool(train_labels, num_classes), val_fraction, split_seed)
    if shard_kn is not None:
        train = train[shard(_Pool(train_labels[train], num_classes), *shard_kn, seed=split_seed + 1)]
    if subset is not None or per_class_cap is not None:
        if subset is not None and subset < 1:
            raise InputError(f"--subset must be a positive number of samples, got {subset}")
        if subset is not None and subset < num_classes:
            raise InputError(f"--subset {subset}: fewer samples than the {num_classes} classes; a "
                             f"class-balanced subset needs one of each at least (--subset {num_classes} "
                             f"or more)")
        if per_class_cap is not None and per_class_cap < 1:
            raise InputError(f"--per-class-cap must be positive, got {per_class_cap}")
        draw = split_seed + 2 if subset_seed is None else subset_seed
        train = train[stratified_take(_Pool(train_labels[train], num_classes), subset, per_class_cap, seed=draw)]
    if len(train) == 0:
        raise InputError("the training split is empty after --shard/--subset; use more data")
    test = torch.arange(len(test_labels))
    if test_subset is not None:
        if test_subset < num_classes:
            raise InputError(f"--test-subset {test_subset}: fewer images than the {num_classes} classes; a "
                             f"class-balanced test subset needs one of each at least")
        test = stratified_take(_Pool(test_labels, num_classes), test_subset, None, seed=split_seed + 3)
    return SplitPositions(train, val, test)


def make_splits(train_full: IndexedDataset, test: IndexedDataset, val_fraction: float = 0.1,
                shard_kn: tuple[int, int] | None = None, subset: int | None = None,
                per_class_cap: int | None = None, split_seed: int = 0, subset_seed: int | None = None,
                test_subset: int | None = None) -> Splits:
    """train_full -> (val held out first, then shard, then subset/cap) ; test kept apart untouched.
    `subset_seed` draws another subset of the same shard (None: the draw that follows from `split_seed`);
    the validation split never depends on it. `test_subset`: a class-balanced draw of that many test
    images (a device's small labelled test set), the same draw for every shard and subset.

    The validation split is taken before sharding, so a pretrain on shard 0/2 and a fine-tune on
    shard 1/2 share one validation set and never see each other's training samples.

    The selections are made on the labels and each split's images copied once: a fine-tune of 512
    images of a 50,000-image source copies 512, not the source's shard and then its subset.
    """
    at = split_positions(train_full.labels, test.labels, train_full.num_classes, val_fraction, shard_kn, subset,
                         per_class_cap, split_seed, subset_seed, test_subset)
    test = test if test_subset is None else test.subset(at.test)
    return Splits(train=train_full.subset(at.train, train_full.name), val=train_full.subset(at.val), test=test)
