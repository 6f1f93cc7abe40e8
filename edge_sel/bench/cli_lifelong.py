"""`edge-sel bench lifelong`: a device's life, night after night, one device per method and seed."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from edge_sel.bench.cli_common import (at_least_one, check_checkpoint, common_options, dataset_or_shared_cifar,
                                       device_image_size, fresh_out, progress, warmup)
from edge_sel.bench.stopping import BenchStop, stop_words
from edge_sel.cli_base import Command
from edge_sel.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from edge_sel.core.words import plural
from edge_sel.errors import InputError


@click.command("lifelong", cls=Command)
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
@click.option("--image-size", type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), default=None,
              help="Folder images resized to S x S, every night, every evaluation and the stream: the device's "
                   "resolution [the checkpoint's; it must match].")
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
                 image_size, device, predict_batch,
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
    at_least_one(epochs, subset, seeds, pretrain_epochs)    # as given: 0 is no default
    if test_subset is not None and test_subset < 1:
        raise InputError(f"--test-subset must be >= 1, got {test_subset}")
    conditions = lifelong.parse_conditions(shifts, lifelong.QUICK_CONDITIONS if ds == "digits" else lifelong.CONDITIONS)
    nights = lifelong.parse_schedule(schedule, conditions, lifelong.QUICK_SCHEDULE if quick else lifelong.SCHEDULE)
    strengths = lifelong.parse_levers(levers)
    if quick and checkpoint is not None:
        raise InputError("--checkpoint: --quick always pretrains its own digits warmup")
    check_checkpoint(checkpoint)
    size = device_image_size(ds, image_size, checkpoint)      # before any image is decoded
    target = fresh_out(out or Path("runs/bench-lifelong"), overwrite, "lifelong", checkpoint, ds, data_dir)
    # pretrain ships the source memory the levers and the guard need
    start = warmup("lifelong", checkpoint, ds, data_dir, pretrain_epochs or (4 if quick else 8), None, device, target,
                   size)
    methods, skipped = lifelong.select_methods(lifelong.life_methods(strengths), method_names, Path(start),
                                               lifelong.QUICK_METHODS if quick else None)
    for name, why in skipped.items():
        click.echo(f"bench lifelong: skipping {name}: {why}", err=True)
    settings = lifelong.LifeSettings(ds, data_dir, Path(start), nights, conditions, methods, list(range(count)), n, e,
                                     lr, device, target, None if quick and test_subset is None else test_subset or 2000,
                                     val_subset=val_subset, skipped=skipped, predict_batch=predict_batch,
                                     image_size=size)
    with BenchStop() as stop:
        result = lifelong.play(settings, progress(quiet), stop)
    result["predict_batch"] = predict_batch
    record = {"suite": "lifelong", "dataset": ds, "checkpoint": str(start), "schedule": nights,
              "conditions": {c: conditions[c] for c in dict.fromkeys(nights)}, "subset": n, "epochs": e, "lr": lr,
              "seeds": list(range(count)), "test_subset": settings.test_subset, "val_subset": val_subset,
              "image_size": size, "predict_batch": predict_batch,
              "levers": {**lifelong.LEVERS, **strengths},
              "methods": [dataclasses.asdict(m) for m in methods], "skipped": skipped}
    written = lifelong_report.write_outputs(result, record, target)
    if stop.stopped:        # the lives finished before the stop, written as a partial bench
        click.echo(f"bench lifelong: {stop_words(result['stopped'])}; wrote {written['results']} (partial)", err=True)
        sys.exit(stop.exit_code())
    click.echo(written["table"])
    click.echo(f"bench lifelong: {len(methods)} methods x {plural(len(nights), 'night')} x {plural(count, 'seed')} in "
               f"{result['wall_s']:.0f} s; wrote {target / 'table.md'}, {written['results']}, {written['figure']}, "
               f"{target / 'report.html'}")
