"""`edge-sel bench edge|reference|adapt|stream|memory`: the comparison tables, measured side by side in one process.

edge       sized for a 2-core laptop CPU: edgecnn fine-tuned from a warmup checkpoint on a
           CIFAR-10 subset (image folders), a few epochs, one seed by default.
reference  the seeds' CIFAR-10 table on a desktop GPU: resnet18_cifar from a fresh initialisation
           per seed, the seeds' epochs, three seeds. --quick: a smoke run (edgecnn, 2 epochs per
           phase, a small subset) that checks the whole pipeline on any machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from edge_sel.bench import contention, suites
from edge_sel.bench.cli_common import (at_least_one, check_checkpoint, common_options, dataset_or_shared_cifar,
                                       device_image_size, fresh_out, parse_activations, parse_scenarios, progress,
                                       warmup)
from edge_sel.bench.cli_lifelong import lifelong_cmd
from edge_sel.bench.cli_memory import memory_cmd
from edge_sel.bench.published import PUBLISHED
from edge_sel.bench.runner import BenchData, SuiteSettings, run_suite
from edge_sel.bench.stopping import BenchStop, stop_words
from edge_sel.cli_base import Group
from edge_sel.config import MAX_IMAGE_SIZE, MEMORY_FORMATS, MIN_IMAGE_SIZE, PRECISIONS, TrainConfig
from edge_sel.core.words import plural
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from edge_sel.errors import InputError


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
    for option, value in (("--epochs", epochs), ("--subset", subset), ("--seeds", seeds), ("--val-cap", val_cap),
                          ("--pretrain-epochs", pretrain_epochs)):        # as given: 0 is no default
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
    chosen = suites.select(suites.edge_systems(e), systems)
    check_checkpoint(checkpoint)
    target = fresh_out(out or Path("runs/bench-edge"), overwrite, "edge", checkpoint, ds, data_dir)
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
    for option, value in (("--subset", subset), ("--seeds", seeds), ("--max-epochs", max_epochs),
                          ("--image-size", image_size)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
    chosen = suites.select(suites.reference_systems(cap), systems)
    pinned = {k: v for k, v in (("precision", precision), ("eval_precision", precision),
                                ("memory_format", memory_format)) if v != "auto"}
    check_checkpoint(checkpoint)
    target = fresh_out(out or Path("runs/bench-reference"), overwrite, "reference", checkpoint, dataset, data_dir)
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
@click.option("--image-size", type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), default=None,
              help="Folder images resized to S x S: the device's resolution [the checkpoint's; it must match].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--test-subset", type=click.IntRange(min=1), default=None,
              help="A class-balanced draw of N test images, noisy and clean [every test image of the shard].")
@click.option("--threads", type=click.IntRange(min=1), default=None, envvar="EDGE_SEL_THREADS", show_envvar=True,
              help="torch's CPU threads of every run [default: the CPUs other work leaves free at the start].")
@common_options(seeds_help="Seeds 0..K-1, paired across methods [5; --quick: 2].",
                quick_help="A smoke run: 300 images, 1 warmup and 1 fine-tune epoch, activation 0.3, 2 seeds "
                           "(paired differences need two).",
                subset_help="Class-balanced subset of N fine-tuning samples [10000; --quick: 300].", systems=False)
def adapt_cmd(dataset, scenarios, activations, method_names, epochs, lr, pretrain_epochs, image_size, device,
              test_subset, threads, data_dir,
              checkpoint, seeds, subset, out, overwrite, quick, quiet):
    """Adaptation to shifted local data: no adaptation, BatchNorm re-estimation, dense, random and
    sundew gates at equal activation, InfoBatch and the recipe, over paired seeds."""
    import torch

    from edge_sel.bench import adapt
    from edge_sel.bench.cli_transfer import use_threads
    ds = dataset_or_shared_cifar(dataset)
    n = subset or (300 if quick else 10000)
    e = epochs or (1 if quick else 2)
    count = seeds or (2 if quick else 5)
    at_least_one(epochs, subset, seeds, pretrain_epochs)    # as given: 0 is no default
    acts = parse_activations(activations, "0.3" if quick else "0.2,0.3,0.5")
    chosen_scenarios = parse_scenarios(scenarios, adapt.SCENARIOS)
    methods = adapt.adapt_methods(acts)
    if method_names is not None:
        wanted = method_names.split(",")
        unknown = [w for w in wanted if w not in {m.name for m in methods}]
        if unknown:
            raise InputError(f"--methods: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(m.name for m in methods)}")
        methods = [m for m in methods if m.name in wanted]
    check_checkpoint(checkpoint)
    size = device_image_size(ds, image_size, checkpoint)      # before any image is decoded
    use_threads(threads)
    target = fresh_out(out or Path("runs/bench-adapt"), overwrite, "adapt", checkpoint, ds, data_dir)
    start = warmup("adapt", checkpoint, ds, data_dir, pretrain_epochs or (1 if quick else 8), n if quick else None,
                    device, target, size)
    log = progress(quiet)
    methods = adapt.with_source_memory(methods, Path(start), log)
    with BenchStop() as stop:
        result = adapt.run_adapt(Path(start), ds, data_dir, n, e, list(range(count)), chosen_scenarios, methods,
                                 target, lr, device, log, stop, size, test_subset)
    bench = adapt.bench_record({"suite": "adapt", "dataset": ds, "checkpoint": str(start), "subset": n,
                                "test_subset": test_subset, "threads": torch.get_num_threads(),
                                "epochs": e, "lr": lr, "seeds": list(range(count)), "image_size": size,
                                "scenarios": chosen_scenarios, "activations": list(acts)}, result, methods)
    written = adapt.write_outputs(bench, target)
    if stop.stopped:        # the runs finished before the stop, written as a partial bench
        click.echo(f"bench adapt: {stop_words(result['stopped'])}; wrote {target / 'bench.json'} (partial)", err=True)
        sys.exit(stop.exit_code())
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
    at_least_one(epochs, subset, seeds, pretrain_epochs)    # as given: 0 is no default
    if f < 2:
        raise InputError(f"--frames must be >= 2, got {f}")
    acts = parse_activations(activations, "0.1" if quick else "0.05,0.1,0.2")
    chosen = parse_scenarios(scenarios, stream.SCENARIOS)
    wanted = stream.FAMILIES if families is None else tuple(families.split(","))
    unknown = [w for w in wanted if w not in stream.FAMILIES]
    if unknown:
        raise InputError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(stream.FAMILIES)}")
    methods = stream.stream_methods(acts, f, wanted)
    check_checkpoint(checkpoint)
    target = fresh_out(out or Path("runs/bench-stream"), overwrite, "stream", checkpoint, ds, data_dir)
    start = warmup("stream", checkpoint, ds, data_dir, pretrain_epochs or (2 if quick else 8), n if quick else None,
                    device, target)
    log = progress(quiet)
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


# The suites of other modules, registered here and nowhere else.
for command in (lifelong_cmd, memory_cmd):
    bench_group.add_command(command)
