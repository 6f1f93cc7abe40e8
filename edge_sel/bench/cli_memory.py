"""`edge-sel bench memory`: fine-tuning under memory budgets, every method against unbudgeted full
fine-tuning."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from edge_sel.bench.cli_common import (at_least_one, check_checkpoint, common_options, dataset_or_shared_cifar,
                                       fresh_out, progress)
from edge_sel.bench.stopping import BenchStop, stop_words
from edge_sel.cli_base import Command
from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import read_card
from edge_sel.core.words import plural
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import pretrain
from edge_sel.errors import InputError


@click.command("memory", cls=Command)
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
                   "(benchmarks/merge_bench_memory.py).")
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
    at_least_one(epochs, subset, seeds, pretrain_epochs)    # as given: 0 is no default
    if scenario not in adapt.SCENARIOS:
        raise InputError(f"--scenario: unknown {scenario}; choose from {', '.join(adapt.SCENARIOS)}")
    fractions = memory.parse_fractions(budgets if budgets is not None or not quick else "1/4,1/30")
    planner_fractions = [] if planner_only is None else memory.parse_fractions(planner_only, "--planner-only")
    planner_fractions = [f for f in planner_fractions if f not in fractions]
    methods = memory.parse_methods(method_names)
    check_checkpoint(checkpoint)
    target = fresh_out(out or Path("runs/bench-memory"), overwrite, "memory", checkpoint, ds, data_dir)
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

    with BenchStop() as stop:
        result = memory.run_bench(settings, progress(quiet), partial, stop)
    bench = {**settings_fields, "seeds": settings.seeds, **result}
    if stop.stopped:        # the runs finished before the stop, as a partial bench
        done = sorted({r["seed"] for rs in result["results"].values() for r in rs})
        memory.write_outputs({**bench, "seeds": done, "partial": True}, target)
        click.echo(f"bench memory: {stop_words(result['stopped'])}; wrote {target / 'bench.json'} (partial)", err=True)
        sys.exit(stop.exit_code())
    written = memory.write_outputs(bench, target)
    click.echo(written["table"])
    line = memory.summary_line(bench)
    click.echo(f"bench memory: {len(methods)} methods x {plural(len(fractions), 'budget')} x {plural(count, 'seed')} "
               f"in {result['wall_s']:.0f} s{'; ' + line if line else ''}; wrote {target / 'table.md'}, "
               f"{target / 'bench.json'}, {written['figure']}, {target / 'report.html'}")
