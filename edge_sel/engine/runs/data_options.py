"""The data a run trains on, as options (DataOptions, recorded in config.json), and the checks that
the data suits the starting checkpoint: the same inputs and classes, the same validation split, no
sample the warmup trained on."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

from edge_sel.core.checkpoint import ModelCard
from edge_sel.data import Splits, load_source, make_splits, parse_shard
from edge_sel.data.split import split_positions
from edge_sel.data.sources import source_paths
from edge_sel.data.shift import apply_shift, parse_shift
from edge_sel.data.sources import check_source
from edge_sel.errors import InputError


@dataclass
class DataOptions:
    dataset: str = "digits"
    data_dir: Path | None = None
    val_fraction: float = 0.1
    shard: str | None = None
    subset: int | None = None
    per_class_cap: int | None = None
    split_seed: int = 0
    image_size: int | None = None
    shift: str | None = None          # a shift scenario (edge_sel.data.shift), e.g. "corrupt=fog:3"
    shift_seed: int = 0
    subset_seed: int | None = None    # another draw of --subset from the same shard (a night's new images)
    test_subset: int | None = None    # a class-balanced draw of N test images (a device's small labelled test set)
    # Random-crop padding in pixels at the run's size. None: the source's, scaled with --image-size
    # (CIFAR's 4 px at 32 px is 16 at 128); filled in when the data is loaded, so config.json says it.
    crop_pad: int | None = None

    def check(self) -> "DataOptions":
        """Every option that can be checked without reading the data."""
        parse_shard(self.shard)
        parse_shift(self.shift)
        check_source(self.dataset, self.data_dir, self.image_size)
        return self

    def load(self) -> Splits:
        self.check()                             # a bad option fails before any data is read
        return self.split(*load_source(self.dataset, self.data_dir, self.image_size))

    def input_paths(self) -> list[tuple[str, Path]]:
        """Where the data is read from, as the options name it (no output may land there)."""
        return source_paths(self.dataset, self.data_dir)

    def split(self, train_full, test) -> Splits:
        """The splits of a loaded source (or of data handed over as objects, by the Python API)."""
        # For warmup_train_ids without reading the source again: its labels and ids, not its images
        # (a run would otherwise keep every image of the source resident to its end).
        self._source = (train_full.labels, train_full.index, test.labels, train_full.num_classes)
        if self.crop_pad is not None:
            if self.crop_pad < 0:
                raise InputError(f"crop_pad must be 0 or more pixels, got {self.crop_pad}")
            train_full, test = (dataclasses.replace(d, augment={**d.augment, "crop_pad": self.crop_pad})
                                for d in (train_full, test))
        self.crop_pad = int(train_full.augment.get("crop_pad", 0))
        splits = make_splits(train_full, test, self.val_fraction, parse_shard(self.shard), self.subset,
                             self.per_class_cap, self.split_seed, self.subset_seed, self.test_subset)
        warn_short_subsets(splits, self.subset, self.test_subset)
        return apply_shift(splits, parse_shift(self.shift), self.shift_seed)

    def warmup_train_ids(self, trained: dict):
        """Sample ids a pretrain described by its model card's dataset (same source) trained on."""
        train_labels, train_ids, test_labels, num_classes = self._source
        warm = split_positions(train_labels, test_labels, num_classes, trained["val_fraction"],
                               parse_shard(trained.get("shard")), trained.get("subset"), trained.get("per_class_cap"),
                               trained["split_seed"], trained.get("subset_seed"))
        return train_ids[warm.train.to(train_ids.device)]


def warn_short_subsets(splits: Splits, subset: int | None, test_subset: int | None) -> None:
    """A subset larger than the data is all of it: said, so a number typed is never silently not
    what ran."""
    for option, asked, got, what in (("--subset", subset, len(splits.train), "training samples (after the "
                                      "validation split, shard and cap)"),
                                     ("--test-subset", test_subset, len(splits.test), "test images")):
        if asked is not None and asked > got:
            warnings.warn(f"{option} {asked}: there are only {got} {what}; all {got} are used")


def check_compatible(card: ModelCard, splits: Splits, where: Path) -> None:
    shape = splits.train.input_shape
    if card.input_shape != shape:
        raise InputError(f"--checkpoint {where}: model expects inputs {card.input_shape}, dataset "
                         f"{splits.train.name} has {shape}")
    if card.num_classes != splits.train.num_classes:
        raise InputError(f"--checkpoint {where}: model has {card.num_classes} classes, dataset "
                         f"{splits.train.name} has {splits.train.num_classes}")
    if card.class_names != splits.train.class_names:
        raise InputError(f"--checkpoint {where}: class names {card.class_names[:4]}... differ from the "
                         f"dataset's {splits.train.class_names[:4]}...")


def dataset_card(splits: Splits, data: DataOptions) -> dict:
    """What the model was trained on, including how the validation split was drawn: a fine-tune of
    the same dataset must hold out the same validation samples, or it would train on some of them."""
    return {"name": splits.train.name, "fingerprint": splits.train.fingerprint(),
            "train_samples": len(splits.train), "val_samples": len(splits.val), "test_samples": len(splits.test),
            "val_fraction": data.val_fraction, "split_seed": data.split_seed, "val_fingerprint": splits.val.fingerprint(),
            "shard": data.shard, "subset": data.subset, "per_class_cap": data.per_class_cap,
            **({"subset_seed": data.subset_seed} if data.subset_seed is not None else {})}


def warn_if_trained_on(card: ModelCard, splits: Splits, data: DataOptions, where: Path) -> None:
    """A fine-tune on samples its warmup trained on measures memorisation, not adaptation: say so
    (a warning, not a refusal: revisiting seen data can be intended). Only pretrains that trained
    an epoch, and cards that record the shard, are checked."""
    trained = card.dataset or {}
    if trained.get("name") != splits.train.name or not {"shard", "val_fraction", "split_seed"} <= trained.keys():
        return      # a card from before the split was recorded: its training samples cannot be rebuilt
    if card.training.get("phase") != "pretrain" or not card.training.get("epochs"):
        return      # a fresh initialisation (0 epochs, as bench reference makes) trained on nothing
    import torch
    from edge_sel.data.frames import scene_of
    # On a camera's stream a frame's id is not its sample's: compare the scenes.
    seen = torch.isin(scene_of(splits.train).cpu(), data.warmup_train_ids(trained).cpu())
    count = int(seen.sum())
    if count:
        shard = f"shard {trained['shard']}" if trained.get("shard") else "all of its training part"
        hint = (f"; fine-tune on another shard, e.g. --shard {other_shard(trained['shard'])}" if trained.get("shard")
                else "; pretrain on a shard (e.g. --shard 0/2) to keep data for fine-tuning")
        warnings.warn(f"{count} of {len(seen)} fine-tuning samples were in the warmup's training data "
                      f"({where} was pretrained on {shard} of {trained['name']}){hint}")


def other_shard(spec: str) -> str:
    k, n = parse_shard(spec)
    return f"{(k + 1) % n}/{n}"


def check_same_split(card: ModelCard, splits: Splits, data: DataOptions, where: Path) -> None:
    """Refuse a fine-tune on the pretrain's dataset with another validation split (older model
    cards without split parameters are accepted)."""
    trained = card.dataset or {}
    if trained.get("name") != splits.train.name or "val_fraction" not in trained:
        return
    for option, key in (("--val-fraction", "val_fraction"), ("--split-seed", "split_seed")):
        if trained[key] != getattr(data, key):
            raise InputError(f"{option} {getattr(data, key)}: the checkpoint {where} was pretrained on "
                             f"{splits.train.name} with {option} {trained[key]}; use the same value so that "
                             f"validation holds no pretraining sample")


def vars_of(data: DataOptions) -> dict:
    return {f.name: (str(v) if isinstance(v := getattr(data, f.name), Path) else v)
            for f in dataclasses.fields(data)}
