"""What the bench suites' commands share: their common options, where their output and data go, and
the warmup a suite makes when no --checkpoint is given."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import read_card
from edge_sel.core.outputs import check_out_dir, start_out_dir
from edge_sel.core.words import plural
from edge_sel.data.sources import SIZED_DATASETS, source_paths
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from edge_sel.errors import InputError

REPO = Path(__file__).resolve().parents[2]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"


def fresh_out(out: Path, overwrite: bool, suite: str, checkpoint: Path | None, dataset: str | None,
               data_dir: Path | None) -> Path:
    """A new --out for `suite` (bench SUITE's own earlier output replaced with --overwrite), never
    onto the checkpoint or the data it reads."""
    command = f"bench {suite}"
    check_out_dir(out, overwrite, command, [("--checkpoint", checkpoint), *source_paths(dataset, data_dir)])
    return start_out_dir(out, command)


def dataset_or_shared_cifar(dataset: str | None) -> str:
    """The --dataset given, else the CIFAR-10 image folders beside the repository."""
    if dataset is not None:
        return dataset
    if not SHARED_CIFAR.is_dir():
        raise InputError(f"--dataset: required here ({SHARED_CIFAR} does not exist)")
    return f"folder:{SHARED_CIFAR}"


def check_checkpoint(path: Path | None) -> None:
    if path is not None:
        read_card(path)     # one-line error when it is not a checkpoint, before any training


def device_image_size(ds: str, image_size: int | None, checkpoint: Path | None,
                      side: int | None = None) -> int | None:
    """The size a bench gives folder (and pack) images at: --image-size, else the checkpoint's (the
    device's resolution, what its warmup trained at; `side` where the bench makes its own start).
    Refused in one line before any image is decoded: a size for a dataset that has its own, a size
    other than the checkpoint's. None: the images as they are."""
    if image_size is not None and ds in SIZED_DATASETS:
        raise InputError(f"--image-size {image_size}: resizes folder images only; --dataset {ds} has its own size")
    if checkpoint is not None:
        height, side = read_card(Path(checkpoint)).input_shape[-2:]
        if height != side:          # not square: the folder must be at that size (finetune says so)
            side = None
        elif image_size is not None and image_size != side:
            raise InputError(f"--image-size {image_size}: the checkpoint {checkpoint} takes {side} px images; "
                             f"pretrain at {image_size} px or leave it out")
    return None if ds in SIZED_DATASETS else image_size or side


def at_least_one(epochs, subset, seeds, pretrain_epochs) -> None:
    for option, value in (("--epochs", epochs), ("--subset", subset), ("--seeds", seeds),
                          ("--pretrain-epochs", pretrain_epochs)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")


def warmup(suite: str, checkpoint: Path | None, ds: str, data_dir, epochs: int, subset: int | None, device: str,
            target: Path, image_size: int | None = None) -> Path:
    """The --checkpoint given, else a clean edgecnn warmup pretrained on shard 0/2 into OUT/warmup
    (at `image_size`: folder images resized)."""
    if checkpoint is not None:
        return Path(checkpoint)
    click.echo(f"bench {suite}: pretraining a clean warmup ({plural(epochs, 'epoch')}, shard 0/2)", err=True)
    pretrain("edgecnn", DataOptions(ds, data_dir, shard="0/2", subset=subset, image_size=image_size),
             TrainConfig(epochs=epochs, seed=0, device=device), target / "warmup", quiet=True)
    return target / "warmup"


def progress(quiet: bool):
    """Where a suite's progress lines go: stderr, or nowhere with --quiet."""
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


def parse_activations(text: str | None, default: str) -> tuple[float, ...]:
    try:
        acts = tuple(float(a) for a in (text or default).split(","))
    except ValueError:
        raise InputError(f"--activations: comma-separated numbers, got {text!r}") from None
    if not all(0 < a <= 1 for a in acts):
        raise InputError(f"--activations: each must be in (0, 1], got {text!r}")
    return acts


def parse_scenarios(text: str | None, known: dict) -> dict:
    """The named scenarios of `known` (all of them when none is named), in the order given."""
    if text is None:
        return known
    chosen = {}
    for name in text.split(","):
        if name not in known:
            raise InputError(f"--scenarios: unknown {name!r}; choose from {', '.join(known)}")
        chosen[name] = known[name]
    return chosen


QUICK_HELP = "A smoke run: tiny subset, 1-2 epochs per phase."
SEEDS_HELP = "Seeds 0..K-1 [edge: 1, reference: 3, --quick: 1]."


SUBSET_HELP = "Class-balanced subset of N fine-tuning samples."


def common_options(fn=None, *, seeds_help: str = SEEDS_HELP, quick_help: str = QUICK_HELP,
                   subset_help: str = SUBSET_HELP, systems: bool = True):
    """The options every suite has; a suite whose seeds, --quick or --subset differ says so in their
    help, and one that picks methods rather than systems has no --systems."""
    if fn is None:
        return lambda f: common_options(f, seeds_help=seeds_help, quick_help=quick_help, subset_help=subset_help,
                                        systems=systems)
    options = [
        click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                     help="Where the CIFAR-10 archive lives (--dataset cifar10)."),
        click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                     help="Starting checkpoint for every system (default: the suite makes its own)."),
        click.option("--seeds", type=int, default=None, help=seeds_help),
        *([click.option("--systems", default=None, help="Comma-separated subset of the suite's systems.")]
          if systems else []),
        click.option("--subset", type=int, default=None, help=subset_help),
        click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory."),
        click.option("--overwrite", is_flag=True, help="Replace an existing --out directory."),
        click.option("--quick", is_flag=True, help=quick_help),
        click.option("--quiet", is_flag=True, help="No progress lines."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn
