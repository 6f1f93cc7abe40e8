"""`edge-sel bench edge|reference|adapt|stream|memory`: the comparison tables, measured side by side in one process.

edge       sized for a 2-core laptop CPU: edgecnn fine-tuned from a warmup checkpoint on a
           CIFAR-10 subset (image folders), a few epochs, one seed by default.
reference  the seeds' CIFAR-10 table on a desktop GPU: resnet18_cifar from a fresh initialisation
           per seed, the seeds' epochs, three seeds. --quick: a smoke run (edgecnn, 2 epochs per
           phase, a small subset) that checks the whole pipeline on any machine.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click

from edge_sel.bench import contention, suites
from edge_sel.bench.published import PUBLISHED
from edge_sel.bench.runner import BenchData, SuiteSettings, run_suite
from edge_sel.cli_base import Group
from edge_sel.config import MEMORY_FORMATS, PRECISIONS, TrainConfig
from edge_sel.core.checkpoint import read_card
from edge_sel.core.words import plural
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.core.outputs import check_out_dir, start_out_dir
from edge_sel.data.sources import source_paths
from edge_sel.engine.runs.run import pretrain
from edge_sel.errors import InputError

REPO = Path(__file__).resolve().parents[2]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"


def _fresh_out(out: Path, overwrite: bool, suite: str, checkpoint: Path | None, dataset: str | None,
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


def _check_checkpoint(path: Path | None) -> None:
    if path is not None:
        read_card(path)     # one-line error when it is not a checkpoint, before any training


def _at_least_one(epochs, subset, seeds, pretrain_epochs) -> None:
    for option, value in (("--epochs", epochs), ("--subset", subset), ("--seeds", seeds),
                          ("--pretrain-epochs", pretrain_epochs)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")


def _warmup(suite: str, checkpoint: Path | None, ds: str, data_dir, epochs: int, subset: int | None, device: str,
            target: Path) -> Path:
    """The --checkpoint given, else a clean edgecnn warmup pretrained on shard 0/2 into OUT/warmup."""
    if checkpoint is not None:
        return Path(checkpoint)
    click.echo(f"bench {suite}: pretraining a clean warmup ({plural(epochs, 'epoch')}, shard 0/2)", err=True)
    pretrain("edgecnn", DataOptions(ds, data_dir, shard="0/2", subset=subset),
             TrainConfig(epochs=epochs, seed=0, device=device), target / "warmup", quiet=True)
    return target / "warmup"


def _progress(quiet: bool):
    """Where a suite's progress lines go: stderr, or nowhere with --quiet."""
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


def _activations(text: str | None, default: str) -> tuple[float, ...]:
    try:
        acts = tuple(float(a) for a in (text or default).split(","))
    except ValueError:
        raise InputError(f"--activations: comma-separated numbers, got {text!r}") from None
    if not all(0 < a <= 1 for a in acts):
        raise InputError(f"--activations: each must be in (0, 1], got {text!r}")
    return acts


def _scenarios(text: str | None, known: dict) -> dict:
    """The named scenarios of `known` (all of them when none is named), in the order given."""
    if text is None:
        return known
    chosen = {}
    for name in text.split(","):
        if name not in known:
            raise InputError(f"--scenarios: unknown {name!r}; choose from {', '.join(known)}")
        chosen[name] = known[name]
    return chosen


def _execute(settings: SuiteSettings, published: dict | None) -> None:
    from edge_sel.bench.outputs import write_outputs
    result = run_suite(settings)
    written = write_outputs(settings, result, published)
    click.echo(written["table"])
    click.echo(f"\nbench {settings.name}: {len(settings.systems)} systems x {len(settings.seeds)} seed(s) in "
               f"{result['wall_s']:.0f} s on {result['device']}")
    click.echo(f"wrote {settings.out / 'bench.json'}, {settings.out / 'table.md'}, {settings.out / 'table.csv'}")
    if written["report"]:
        click.echo(f"report: {written['report']}")


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


@click.group("bench", cls=Group)
def bench_group():
    """Benchmark suites: every system measured side by side in one run (counted FLOPs, joules)."""


@bench_group.command("edge")
@click.option("--dataset", default=None,
              help="Dataset [default: folder:../shared/data/cifar10-jpeg beside the repository, if present].")
@click.option("--epochs", type=int, default=None, help="Fine-tune epochs per system [6; --quick: 2].")
@click.option("--val-cap", type=int, default=None,
              help="Validation images evaluated each epoch (stratified) [2000; --quick: 300].")
@click.option("--pretrain-epochs", type=int, default=None,
              help="Epochs of the warmup the bench makes when --checkpoint is not given [4; --quick: 2].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--busy", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Busy processes (a Python loop each) started beside every system: figures under load, on purpose.")
@click.option("--busy-nice", type=click.IntRange(0, 19), default=0, show_default=True,
              help="Nice level of the --busy processes.")
@common_options
def edge_cmd(dataset, epochs, val_cap, pretrain_epochs, device, busy, busy_nice, data_dir, checkpoint, seeds, systems,
             subset, out, overwrite, quick, quiet):
    """Edge-sized comparison: edgecnn from a warmup checkpoint on a CIFAR-10 subset, 2-core CPU."""
    ds = dataset_or_shared_cifar(dataset)
    n = subset or (400 if quick else 8000)
    e = epochs or (2 if quick else 6)
    for option, value in (("--epochs", e), ("--subset", n), ("--seeds", seeds), ("--val-cap", val_cap),
                          ("--pretrain-epochs", pretrain_epochs)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
    chosen = suites.select(suites.edge_systems(e), systems)
    _check_checkpoint(checkpoint)
    target = _fresh_out(out or Path("runs/bench-edge"), overwrite, "edge", checkpoint, ds, data_dir)
    data = BenchData(ds, data_dir, shard="1/2", subset=n, val_cap=val_cap or (300 if quick else 2000),
                     epoch_test_per_class=100)
    start = checkpoint
    notes = [f"edgecnn fine-tuned on {n:,} samples of shard 1/2 of {ds}, {plural(e, 'epoch')} per system, "
             f"validation capped at {data.val_cap:,} images."]
    if start is None:
        pe = pretrain_epochs or (2 if quick else 4)
        click.echo(f"bench edge: pretraining a warmup checkpoint ({plural(pe, 'epoch')}, shard 0/2, {n:,} samples)",
                   err=True)
        t0 = time.perf_counter()
        pretrain("edgecnn", DataOptions(ds, data_dir, shard="0/2", subset=n),
                 TrainConfig(epochs=pe, seed=0, device=device), target / "warmup", quiet=True)
        start = target / "warmup"
        notes.append(f"Warmup checkpoint made by the bench: edgecnn, {plural(pe, 'dense epoch')} on {n:,} samples of "
                     f"shard 0/2 ({time.perf_counter() - t0:.0f} s, not part of any system).")
    else:
        notes.append(f"Warmup checkpoint: {start}.")
    count = seeds or 1
    notes.append(f"Other work on the CPU: {contention.describe(busy, busy_nice)} (the warmup made without it).")
    settings = SuiteSettings("edge", chosen, data, dict(suites.EDGE_COMMON), list(range(count)),
                             {k: Path(start) for k in range(count)}, target, device, quiet, notes)
    with contention.busy(busy, busy_nice):
        _execute(settings, None)


def _capped(system, cap: int) -> bool:
    """Whether the seeds' own epochs of `system` exceed `cap`."""
    seeds = {s.name: s for s in suites.reference_systems()}
    own = seeds[system.control_of or system.name]
    return any(p.epochs > cap for p in own.phases)


@bench_group.command("reference")
@click.option("--dataset", default="cifar10", show_default=True,
              help="cifar10 (archive under --data-dir, or a torchvision download where it imports) | folder:PATH | pack:PATH")
@click.option("--model", "model_name", default=None,
              help="Model for the fresh initialisation [resnet18_cifar; --quick: edgecnn].")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--image-size", type=int, default=None,
              help="Resize folder and pack images to S x S (EfficientNet-Lite0 at 224, say).")
@click.option("--max-epochs", type=int, default=None,
              help="Cap every phase at N epochs (a time-boxed run; the table says so) [the seeds' epochs; --quick: 2].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Every pass of every run in this precision (auto: as each run chooses, measured on a CPU).")
@click.option("--memory-format", type=click.Choice(MEMORY_FORMATS), default="auto", show_default=True,
              help="Every run's activation layout (auto: measured by each run).")
@click.option("--no-report", is_flag=True, help="bench.json and the tables only (no report.html and its plots).")
@common_options
def reference_cmd(dataset, model_name, device, image_size, max_epochs, precision, memory_format, no_report, data_dir,
                  checkpoint, seeds, systems, subset, out, overwrite, quick, quiet):
    """The seeds' CIFAR-10 reference table on a desktop GPU, with their published numbers beside ours."""
    n = subset or (1000 if quick else None)
    model = model_name or ("edgecnn" if quick else "resnet18_cifar")
    cap = max_epochs or (2 if quick else None)
    for option, value in (("--subset", n), ("--seeds", seeds), ("--max-epochs", max_epochs),
                          ("--image-size", image_size)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
    chosen = suites.select(suites.reference_systems(cap), systems)
    pinned = {k: v for k, v in (("precision", precision), ("eval_precision", precision),
                                ("memory_format", memory_format)) if v != "auto"}
    _check_checkpoint(checkpoint)
    target = _fresh_out(out or Path("runs/bench-reference"), overwrite, "reference", checkpoint, dataset, data_dir)
    count = seeds or (1 if quick else 3)
    data = BenchData(dataset, data_dir, subset=n, image_size=image_size)
    px = f" at {image_size} px" if image_size else ""
    notes = [f"{'--quick smoke run: ' if quick else ''}{model} on {dataset}{px}"
             f"{f' ({n:,}-sample subset)' if n else ''}; every system of a seed starts from the same weights."]
    capped = [s.name for s in chosen if cap and _capped(s, cap)]
    if capped:
        notes.append(f"Every phase capped at {plural(cap, 'epoch')}, fewer than the seeds ran for {', '.join(capped)}.")
    if checkpoint is not None:
        start = {k: Path(checkpoint) for k in range(count)}
        notes.append(f"Starting checkpoint: {checkpoint}.")
    else:
        # The seed started every experiment from one initialisation; here one per seed, no
        # ImageNet weights (the seed's backbone was ImageNet-pretrained).
        start = {}
        for k in range(count):
            start[k] = target / "init" / f"seed{k}"
            # A fresh initialisation ships no source memory: a Fisher of random weights says nothing.
            pretrain(model, DataOptions(dataset, data_dir, subset=n, image_size=image_size),
                     TrainConfig(epochs=0, seed=k, device=device, anchors_per_class=0, **pinned), start[k], quiet=True)
        notes.append("Starting weights: a fresh initialisation per seed (no ImageNet weights, unlike the "
                     "seed's partly pretrained ResNet-18), so absolute accuracies differ from the published ones.")
    if pinned:
        notes.append("Given for every run: " + ", ".join(f"{k} {v}" for k, v in pinned.items()) + ".")
    settings = SuiteSettings("reference", chosen, data, dict(suites.REFERENCE_COMMON), list(range(count)),
                             start, target, device, quiet, notes, pinned, not no_report)
    _execute(settings, PUBLISHED)


@bench_group.command("adapt")
@click.option("--dataset", default=None,
              help="Dataset [default: folder:../shared/data/cifar10-jpeg beside the repository, if present].")
@click.option("--scenarios", default=None,
              help="Comma-separated scenario names (noise, noise+labels) [default: both].")
@click.option("--activations", default=None, help="Target activations of the gates and their random controls "
              "[default: 0.2,0.3,0.5; --quick: 0.3].")
@click.option("--methods", "method_names", default=None, help="Comma-separated subset of the methods.")
@click.option("--epochs", type=int, default=None, help="Fine-tune epochs of the training methods [2; --quick: 1].")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate of every training method.")
@click.option("--pretrain-epochs", type=int, default=None,
              help="Epochs of the clean warmup the bench makes when --checkpoint is not given [8; --quick: 1].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@common_options(seeds_help="Seeds 0..K-1, paired across methods [5; --quick: 2].",
                quick_help="A smoke run: 300 images, 1 warmup and 1 fine-tune epoch, activation 0.3, 2 seeds "
                           "(paired differences need two).",
                subset_help="Class-balanced subset of N fine-tuning samples [10000; --quick: 300].", systems=False)
def adapt_cmd(dataset, scenarios, activations, method_names, epochs, lr, pretrain_epochs, device, data_dir,
              checkpoint, seeds, subset, out, overwrite, quick, quiet):
    """Adaptation to shifted local data: no adaptation, BatchNorm re-estimation, dense, random and
    sundew gates at equal activation, InfoBatch and the recipe, over paired seeds."""
    from edge_sel.bench import adapt
    ds = dataset_or_shared_cifar(dataset)
    n = subset or (300 if quick else 10000)
    e = epochs or (1 if quick else 2)
    count = seeds or (2 if quick else 5)
    _at_least_one(e, n, count, pretrain_epochs)
    acts = _activations(activations, "0.3" if quick else "0.2,0.3,0.5")
    chosen_scenarios = _scenarios(scenarios, adapt.SCENARIOS)
    methods = adapt.adapt_methods(acts)
    if method_names is not None:
        wanted = method_names.split(",")
        unknown = [w for w in wanted if w not in {m.name for m in methods}]
        if unknown:
            raise InputError(f"--methods: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(m.name for m in methods)}")
        methods = [m for m in methods if m.name in wanted]
    _check_checkpoint(checkpoint)
    target = _fresh_out(out or Path("runs/bench-adapt"), overwrite, "adapt", checkpoint, ds, data_dir)
    start = _warmup("adapt", checkpoint, ds, data_dir, pretrain_epochs or (1 if quick else 8), n if quick else None,
                    device, target)
    log = _progress(quiet)
    result = adapt.run_adapt(Path(start), ds, data_dir, n, e, list(range(count)), chosen_scenarios, methods,
                             target, lr, device, log)
    bench = adapt.bench_record({"suite": "adapt", "dataset": ds, "checkpoint": str(start), "subset": n,
                                "epochs": e, "lr": lr, "seeds": list(range(count)),
                                "scenarios": chosen_scenarios, "activations": list(acts)}, result, methods)
    written = adapt.write_outputs(bench, target)
    click.echo(written["table"])
    click.echo(f"bench adapt: {len(methods)} methods x {len(chosen_scenarios)} scenarios x {plural(count, 'seed')} in "
               f"{result['wall_s']:.0f} s; wrote {target / 'table.md'}, {target / 'bench.json'}, "
               f"{target / 'report.html'}")


@bench_group.command("stream")
@click.option("--dataset", default=None,
              help="Dataset [default: folder:../shared/data/cifar10-jpeg beside the repository, if present; "
                   "--quick: digits].")
@click.option("--scenarios", default=None, help="Comma-separated: clean, noise (gaussian_noise:3) [default: both].")
@click.option("--activations", default=None, help="Target activations [default: 0.05,0.1,0.2; --quick: 0.1].")
@click.option("--methods", "families", default=None,
              help="Comma-separated families: random, sundew, sundew-novelty, one-per-scene [default: all].")
@click.option("--frames", type=int, default=None, help="Frames per scene [10; --quick: 5].")
@click.option("--order", type=click.Choice(["scene", "shuffled"]), default="scene", show_default=True,
              help="The order the device sees its frames in.")
@click.option("--epochs", type=int, default=None, help="Fine-tune epochs [3; --quick: 1].")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate of every method.")
@click.option("--pretrain-epochs", type=int, default=None,
              help="Epochs of the clean warmup the bench makes when --checkpoint is not given [8; --quick: 2].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@common_options(seeds_help="Seeds 0..K-1, paired across methods [10; --quick: 2].",
                quick_help="A smoke run on digits: 150 scenes of 5 frames, activation 0.1, a 2-epoch warmup, "
                           "1 fine-tune epoch, 2 seeds (paired differences need two).",
                subset_help="Class-balanced number of scenes in the stream, each seen as --frames frames "
                            "[1000; --quick: 150].", systems=False)
def stream_cmd(dataset, scenarios, activations, families, frames, order, epochs, lr, pretrain_epochs, device,
               data_dir, checkpoint, seeds, subset, out, overwrite, quick, quiet):
    """Gates on a camera's stream of near-duplicate frames: random, sundew, sundew with novelty and one
    frame per scene, at equal activation over paired seeds (--subset: number of scenes)."""
    from edge_sel.bench import stream
    ds = dataset or ("digits" if quick else dataset_or_shared_cifar(None))
    n = subset or (150 if quick else 1000)
    f = frames or (5 if quick else 10)
    e = epochs or (1 if quick else 3)
    count = seeds or (2 if quick else 10)
    _at_least_one(e, n, count, pretrain_epochs)
    if f < 2:
        raise InputError(f"--frames must be >= 2, got {f}")
    acts = _activations(activations, "0.1" if quick else "0.05,0.1,0.2")
    chosen = _scenarios(scenarios, stream.SCENARIOS)
    wanted = stream.FAMILIES if families is None else tuple(families.split(","))
    unknown = [w for w in wanted if w not in stream.FAMILIES]
    if unknown:
        raise InputError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(stream.FAMILIES)}")
    methods = stream.stream_methods(acts, f, wanted)
    _check_checkpoint(checkpoint)
    target = _fresh_out(out or Path("runs/bench-stream"), overwrite, "stream", checkpoint, ds, data_dir)
    start = _warmup("stream", checkpoint, ds, data_dir, pretrain_epochs or (2 if quick else 8), n if quick else None,
                    device, target)
    log = _progress(quiet)
    result = stream.run_stream(Path(start), ds, data_dir, n, f, order, e, list(range(count)), chosen, methods,
                               target, lr, device, log)
    bench = stream.bench_record({"suite": "stream", "dataset": ds, "checkpoint": str(start), "scenes": n,
                                 "frames": f, "order": order, "epochs": e, "lr": lr, "seeds": list(range(count)),
                                 "scenarios": chosen, "activations": list(acts)}, result, methods)
    written = stream.write_outputs(bench, target)
    click.echo(written["table"])
    click.echo(f"bench stream: {len(methods)} methods x {len(chosen)} scenarios x {count} seeds in "
               f"{result['wall_s']:.0f} s; wrote {target / 'table.md'}, {target / 'bench.json'}, "
               f"{written['figure']}, {target / 'report.html'}")


@bench_group.command("lifelong")
@click.option("--dataset", default=None,
              help="Dataset [default: folder:../shared/data/cifar10-jpeg beside the repository, if present; "
                   "--quick: digits].")
@click.option("--schedule", default=None,
              help="Comma-separated conditions, one a night [day,night,day,few,night,labels,fog,day; "
                   "--quick: night,few,day].")
@click.option("--shift", "shifts", multiple=True, metavar="NAME=SPEC",
              help="Add or redefine a condition: NAME=a --shift spec, e.g. night=corrupt=gaussian_noise:3 or "
                   "rain=corrupt=gaussian_blur:2 (repeatable). Built in: day (clean), night "
                   "(corrupt=gaussian_noise:3; digits: contrast:4), fog (corrupt=fog:3), few (classes=0,1,8,9; "
                   "digits: 0,1,2,3), labels (label-noise=0.3:val), longtail (imbalance=longtail:10).")
@click.option("--methods", "method_names", default=None,
              help="Comma-separated methods: none, bn, conditions, dense, recipe, recipe+ewc, recipe+replay, "
                   "recipe+bn_anchor_share, recipe+reset_forgetting, recipe+bn_conditions, recipe-noguard, lifelong "
                   "[default: all; "
                   "--quick: none,bn,conditions,dense,recipe,lifelong]. Levers need a warmup with source memory.")
@click.option("--lever", "levers", multiple=True, metavar="KEY=VALUE",
              help="Strength of a lever in its row and in lifelong: ewc, replay, bn_anchor_share, "
                   "reset_forgetting, bn_conditions [1, 0.5, 0.5, 10, 4; lifelong: ewc 0.1] (repeatable).")
@click.option("--epochs", type=int, default=None, help="Fine-tune epochs a night [2; --quick: 1].")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate of every training method.")
@click.option("--test-subset", type=int, default=None,
              help="Test images per domain the bench evaluates the deployed model on, class-balanced "
                   "[2000; --quick: all]; the server's clean test split is always whole.")
@click.option("--val-subset", type=click.IntRange(min=0), default=0, show_default=True,
              help="Validation images every method's nights decide by (keep-best, promote); 0: each method's own "
                   "(the whole validation split; the recipe sizes its own).")
@click.option("--pretrain-epochs", type=int, default=None,
              help="Epochs of the clean warmup the bench makes when --checkpoint is not given [8; --quick: 4].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--predict-batch", type=click.IntRange(min=0), default=1, show_default=True,
              help="Besides whole batches, the deployed model predicts the domains' images as a camera's stream "
                   "(segments cycling the domains, classes in runs of 30), N images a call; 0: whole batches only.")
@common_options(seeds_help="Seeds 0..K-1, paired across methods [5; --quick: 2].",
                quick_help="A smoke run on digits: 3 nights, 2 seeds, 6 methods, 150 images a night, 1 epoch, "
                           "its own warmup.",
                subset_help="Images a night, class-balanced, drawn anew each night [1000; --quick: 150].",
                systems=False)
def lifelong_cmd(dataset, schedule, shifts, method_names, levers, epochs, lr, test_subset, val_subset, pretrain_epochs,
                 device, predict_batch,
                 data_dir, checkpoint, seeds, subset, out, overwrite, quick, quiet):
    """A device's life: a schedule of nights (fine-tune from the deployed model on tonight's data, then
    promote), one device per method and seed; the deployed model's accuracy on every domain after
    every night, forgetting, counted FLOPs and joules all in, single-night references and the aims
    (--subset: images a night, drawn anew each night)."""
    from edge_sel.bench import lifelong, lifelong_report
    ds = dataset or ("digits" if quick else dataset_or_shared_cifar(None))
    n = subset or (150 if quick else 1000)
    e = epochs or (1 if quick else 2)
    count = seeds or (2 if quick else 5)
    _at_least_one(e, n, count, pretrain_epochs)
    if test_subset is not None and test_subset < 1:
        raise InputError(f"--test-subset must be >= 1, got {test_subset}")
    conditions = lifelong.parse_conditions(shifts, lifelong.QUICK_CONDITIONS if ds == "digits" else lifelong.CONDITIONS)
    nights = lifelong.parse_schedule(schedule, conditions, lifelong.QUICK_SCHEDULE if quick else lifelong.SCHEDULE)
    strengths = lifelong.parse_levers(levers)
    if quick and checkpoint is not None:
        raise InputError("--checkpoint: --quick always pretrains its own digits warmup")
    _check_checkpoint(checkpoint)
    target = _fresh_out(out or Path("runs/bench-lifelong"), overwrite, "lifelong", checkpoint, ds, data_dir)
    # pretrain ships the source memory the levers and the guard need
    start = _warmup("lifelong", checkpoint, ds, data_dir, pretrain_epochs or (4 if quick else 8), None, device, target)
    methods, skipped = lifelong.select_methods(lifelong.life_methods(strengths), method_names, Path(start),
                                               lifelong.QUICK_METHODS if quick else None)
    for name, why in skipped.items():
        click.echo(f"bench lifelong: skipping {name}: {why}", err=True)
    settings = lifelong.LifeSettings(ds, data_dir, Path(start), nights, conditions, methods, list(range(count)), n, e,
                                     lr, device, target, None if quick and test_subset is None else test_subset or 2000,
                                     val_subset=val_subset, skipped=skipped, predict_batch=predict_batch)
    result = lifelong.play(settings, _progress(quiet))
    result["predict_batch"] = predict_batch
    record = {"suite": "lifelong", "dataset": ds, "checkpoint": str(start), "schedule": nights,
              "conditions": {c: conditions[c] for c in dict.fromkeys(nights)}, "subset": n, "epochs": e, "lr": lr,
              "seeds": list(range(count)), "test_subset": settings.test_subset, "val_subset": val_subset,
              "predict_batch": predict_batch,
              "levers": {**lifelong.LEVERS, **strengths},
              "methods": [dataclasses.asdict(m) for m in methods], "skipped": skipped}
    written = lifelong_report.write_outputs(result, record, target)
    click.echo(written["table"])
    click.echo(f"bench lifelong: {len(methods)} methods x {plural(len(nights), 'night')} x {plural(count, 'seed')} in "
               f"{result['wall_s']:.0f} s; wrote {target / 'table.md'}, {written['results']}, {written['figure']}, "
               f"{target / 'report.html'}")


@bench_group.command("memory")
@click.option("--dataset", default=None,
              help="Dataset [default: folder:../shared/data/cifar10-jpeg beside the repository, if present].")
@click.option("--model", "model_name", default="edgecnn", show_default=True,
              help="Model of the warmup the bench makes when --checkpoint is not given (edgecnn, mobilenetv2).")
@click.option("--image-size", type=click.IntRange(8, 512), default=None,
              help="Resize folder images to S x S [default: as stored, 32 for CIFAR-10].")
@click.option("--scenario", default="noise", show_default=True, help="The shift scenario (noise, noise+labels).")
@click.option("--budgets", default=None,
              help="Budgets as fractions of full fine-tuning's counted peak [1/2,1/4,1/10,1/30; --quick: 1/4,1/30].")
@click.option("--planner-only", default=None,
              help="More budgets (fractions) at which the planner alone runs, e.g. 1/2,1/4,1/30 beside --budgets 1/10.")
@click.option("--methods", "method_names", default=None,
              help="Comma-separated subset of: full FT planned, classifier, last-k, bias-norm, layers, rgn, planner "
                   "(unbudgeted full FT always runs).")
@click.option("--epochs", type=int, default=None, help="Fine-tune epochs [2; --quick: 1].")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate of every method.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Training batch size.")
@click.option("--test-subset", type=click.IntRange(1), default=None,
              help="Class-balanced N test images (shifted and clean) [all; --quick: 200].")
@click.option("--val-subset", type=click.IntRange(0), default=0, show_default=True,
              help="Validate on N images a epoch (0: the whole validation split); keep is last either way.")
@click.option("--pretrain-epochs", type=int, default=None,
              help="Epochs of the clean warmup the bench makes when --checkpoint is not given [8; --quick: 2].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--first-seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seeds run are FIRST..FIRST+K-1 (K: --seeds): benches of other seeds can be merged "
                   "(tools/merge_bench_memory.py).")
@click.option("--one-process", is_flag=True,
              help="Run every fine-tune in this process (faster to start; no measured peaks: a run would reuse "
                   "pages earlier runs freed) instead of each in a process of its own.")
@common_options(seeds_help="Seeds 0..K-1, paired across methods [5; --quick: 1].",
                quick_help="A smoke run: 300 images, 200 test images, a 2-epoch warmup, 1 fine-tune epoch, "
                           "budgets 1/4 and 1/30, 1 seed.",
                subset_help="Class-balanced subset of N fine-tuning samples [10000; --quick: 300].", systems=False)
def memory_cmd(dataset, model_name, image_size, scenario, budgets, planner_only, method_names, epochs, lr,
               batch_size, test_subset, val_subset, pretrain_epochs, device, first_seed, one_process, data_dir, checkpoint,
               seeds, subset, out, overwrite, quick, quiet):
    """Fine-tuning under memory budgets (fractions of full fine-tuning's counted peak): full FT planned to
    fit, classifier, last-k, biases and norms, layers, rgn and the planner, against unbudgeted full FT."""
    from edge_sel.bench import adapt, memory
    ds = dataset_or_shared_cifar(dataset)
    n = subset or (300 if quick else 10000)
    e = epochs or (1 if quick else 2)
    count = seeds or (1 if quick else 5)
    tests = test_subset or (200 if quick else None)
    _at_least_one(e, n, count, pretrain_epochs)
    if scenario not in adapt.SCENARIOS:
        raise InputError(f"--scenario: unknown {scenario}; choose from {', '.join(adapt.SCENARIOS)}")
    fractions = memory.parse_fractions(budgets if budgets is not None or not quick else "1/4,1/30")
    planner_fractions = [] if planner_only is None else memory.parse_fractions(planner_only, "--planner-only")
    planner_fractions = [f for f in planner_fractions if f not in fractions]
    methods = memory.parse_methods(method_names)
    _check_checkpoint(checkpoint)
    target = _fresh_out(out or Path("runs/bench-memory"), overwrite, "memory", checkpoint, ds, data_dir)
    data = DataOptions(ds, data_dir, shard="1/2", subset=n, image_size=image_size, test_subset=tests)
    if checkpoint is None:
        warm = pretrain_epochs or (2 if quick else 8)
        click.echo(f"bench memory: pretraining a clean {model_name} warmup ({plural(warm, 'epoch')}, shard 0/2)",
                   err=True)
        pretrain(model_name, dataclasses.replace(data, shard="0/2", subset=n if quick else None),
                 TrainConfig(epochs=warm, seed=0, device=device, batch_size=batch_size, val_subset=val_subset),
                 target / "warmup", quiet=True)
        checkpoint = target / "warmup"
    settings = memory.MemorySettings(Path(checkpoint), data, e, lr, batch_size, val_subset, device, fractions,
                                     methods, planner_fractions, scenario, list(range(first_seed, first_seed + count)),
                                     target, own_process=not one_process)
    settings_fields = {"suite": "memory", "dataset": ds, "checkpoint": str(checkpoint),
                       "model": read_card(Path(checkpoint)).architecture, "subset": n, "test_subset": tests, "epochs": e,
                       "lr": lr, "batch_size": batch_size, "val_subset": val_subset, "scenario": scenario,
                       "fractions": fractions, "planner_only": planner_fractions, "methods": methods}

    def partial(state: dict) -> None:      # the seeds done so far, written as a whole bench of them
        done = sorted({r["seed"] for rs in state["results"].values() for r in rs})
        memory.write_outputs({**settings_fields, "seeds": done, "partial": True, **state}, target)

    result = memory.run_bench(settings, _progress(quiet), partial)
    bench = {**settings_fields, "seeds": settings.seeds, **result}
    written = memory.write_outputs(bench, target)
    click.echo(written["table"])
    line = memory.summary_line(bench)
    click.echo(f"bench memory: {len(methods)} methods x {plural(len(fractions), 'budget')} x {plural(count, 'seed')} "
               f"in {result['wall_s']:.0f} s{'; ' + line if line else ''}; wrote {target / 'table.md'}, "
               f"{target / 'bench.json'}, {written['figure']}, {target / 'report.html'}")
