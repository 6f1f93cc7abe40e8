"""Deterministic, stratified selections of a dataset: val split, shards, subsets, caps."""

from __future__ import annotations

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
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    rest, val = stratified_split(train_full, val_fraction, split_seed)
    train = train_full.subset(rest, train_full.name)
    if shard_kn is not None:
        train = train.subset(shard(train, *shard_kn, seed=split_seed + 1))
    if subset is not None or per_class_cap is not None:
        if subset is not None and subset < 1:
            raise InputError(f"--subset must be a positive number of samples, got {subset}")
        if subset is not None and subset < train.num_classes:
            raise InputError(f"--subset {subset}: fewer samples than the {train.num_classes} classes; a "
                             f"class-balanced subset needs one of each at least (--subset {train.num_classes} "
                             f"or more)")
        if per_class_cap is not None and per_class_cap < 1:
            raise InputError(f"--per-class-cap must be positive, got {per_class_cap}")
        draw = split_seed + 2 if subset_seed is None else subset_seed
        train = train.subset(stratified_take(train, subset, per_class_cap, seed=draw))
    if len(train) == 0:
        raise InputError("the training split is empty after --shard/--subset; use more data")
    if test_subset is not None:
        if test_subset < test.num_classes:
            raise InputError(f"--test-subset {test_subset}: fewer images than the {test.num_classes} classes; a "
                             f"class-balanced test subset needs one of each at least")
        test = test.subset(stratified_take(test, test_subset, None, seed=split_seed + 3))
    return Splits(train=train, val=train_full.subset(val), test=test)
