"""`edge-sel bench transfer`: the command (the bench itself: bench/transfer.py and transfer_report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge_sel.bench.cli_common import (check_checkpoint, dataset_or_shared_cifar, device_image_size, fresh_out,
                                       progress)
from edge_sel.bench.stopping import BenchStop, stop_words
from edge_sel.cli_base import Command
from edge_sel.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from edge_sel.core.checkpoint import read_card
from edge_sel.core.words import plural
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.errors import InputError


def use_threads(count: int | None) -> None:
    """Every run's torch threads: a run in a process of its own takes this process's (bench/memory.py)."""
    from edge_sel.profiles.apply import threads_for_command
    threads_for_command(count)


@click.command("transfer", cls=Command)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="The warmup every method starts from (edge-sel pretrain; from ImageNet weights with "
                   "--head-epochs for the field's protocol).")
@click.option("--from-imagenet", "imagenet_model", default=None, metavar="MODEL",
              help="Start instead from MODEL's ImageNet weights with a fresh head (a model that has them, "
                   "e.g. efficientnet_lite0).")
@click.option("--dataset", default=None,
              help="Dataset [default: folder:../shared/data/cifar10-jpeg beside the repository, if present]; "
                   "the device's data is its shard 1/2.")
@click.option("--scenario", default="noise", show_default=True,
              help="The device's condition: clean, a corruption of bench adapt's (noise, noise+labels), or "
                   "contrast (a camera the clean server never saw).")
@click.option("--image-size", type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), default=None,
              help="Folder images resized to S x S: the device's resolution [the checkpoint's; it must match].")
@click.option("--methods", "method_names", default=None,
              help="Comma-separated subset of the methods (full FT always runs) [default: all].")
@click.option("--last-k", type=click.IntRange(1), default=2, show_default=True, help="Blocks the last-k method trains.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Fine-tune epochs of every method [3; --quick: 1].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Learning rate of every method.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Training batch size.")
@click.option("--bn-momentum", type=click.FloatRange(min=0, max=1, min_open=True), default=0.1, show_default=True,
              help="Every BatchNorm layer's momentum while fine-tuning (weights converted from TensorFlow carry 0.01).")
@click.option("--subset", type=click.IntRange(2), default=None,
              help="Class-balanced device images to fine-tune on [2000; --quick: 500].")
@click.option("--test-subset", type=click.IntRange(1), default=None,
              help="Class-balanced test images, under the condition and clean [1000; --quick: 300].")
@click.option("--val-subset", type=click.IntRange(0), default=200, show_default=True,
              help="Validation images evaluated each epoch (every method keeps its last epoch).")
@click.option("--seeds", type=click.IntRange(1), default=None, help="Seeds 0..K-1, paired across methods [5; --quick: 2].")
@click.option("--first-seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seeds FIRST..FIRST+K-1 instead (benches of other seeds run at once merge with "
                   "benchmarks/merge_bench_transfer.py).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--one-process", is_flag=True,
              help="Every fine-tune in this process (no measured peaks: a run would reuse pages earlier runs freed).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory [runs/bench-transfer].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@click.option("--quick", is_flag=True, help="A smoke run: 500 images, 300 test images, 1 epoch, 2 seeds (and 96 px "
                                            "with --from-imagenet).")
@click.option("--threads", type=click.IntRange(min=1), default=None, envvar="EDGE_SEL_THREADS", show_envvar=True,
              help="torch's CPU threads of every run [default: the CPUs other work leaves free at the start].")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def transfer_cmd(checkpoint, imagenet_model, dataset, scenario, image_size, method_names, last_k, epochs, lr, batch_size, bn_momentum,
                 subset, test_subset, val_subset, seeds, first_seed, device, one_process, out, overwrite, quick, threads,
                 quiet):
    """The field's transfer protocol on the device's shard: full fine-tuning, classifier, BatchNorm,
    biases, last-k, a sparse update (each with BatchNorm statistics frozen, and re-estimated), AdaBN,
    the classifier with statistics per condition, the planner at 1/4, 1/10, 1/30 of full fine-tuning's counted peak,
    Sundew against random and SEL against its control, over paired seeds, beside TinyTL's and
    MCUNetV3's published rows."""
    from edge_sel.bench import adapt, transfer, transfer_report
    if (checkpoint is None) == (imagenet_model is None):
        raise InputError("--checkpoint: give a warmup checkpoint or --from-imagenet MODEL, one of them")
    if scenario not in transfer.CONDITIONS:
        raise InputError(f"--scenario: unknown {scenario}; choose from {', '.join(transfer.CONDITIONS)}")
    n = subset or (500 if quick else 2000)
    methods = transfer.chosen_methods(method_names, transfer.transfer_methods(last_k, n))
    if imagenet_model is not None:
        from edge_sel.models.pretrained import weights_config, weights_file
        weights_file(weights_config(imagenet_model, "--from-imagenet"), "--from-imagenet")  # before any work
    check_checkpoint(checkpoint)
    ds = dataset_or_shared_cifar(dataset)
    side = (96 if quick else 128) if checkpoint is None else read_card(Path(checkpoint)).input_shape[-1]
    size = device_image_size(ds, image_size, checkpoint, side)
    use_threads(threads)
    if device == "cpu" and not quick and not quiet and (seeds is None or subset is None):
        click.echo(f"bench transfer: the defaults are sized for a GPU ({plural(len(methods), 'method')} x "
                   f"{seeds or 5} seeds x {subset or 2000:,} images at {size or side} px); on a CPU they take hours: "
                   f"--quick, or fewer --seeds, --methods and --subset", err=True)
    count = seeds or (2 if quick else 5)
    target = fresh_out(out or Path("runs/bench-transfer"), overwrite, "transfer", checkpoint, ds, None)
    data = DataOptions(ds, None, shard="1/2", subset=n, image_size=size, test_subset=test_subset or (300 if quick else 1000))
    if checkpoint is None:
        run_epochs = epochs or (1 if quick else 3)
        checkpoint = transfer.imagenet_start(imagenet_model, data, target, device, lr, batch_size,
                                             transfer.set_gains_steps(methods, run_epochs, n, batch_size),
                                             transfer.start_anchors(methods))
    methods = adapt.with_source_memory(methods, Path(checkpoint), progress(quiet))
    transfer.name_what_trains(methods, Path(checkpoint))
    run_epochs = epochs or (1 if quick else 3)
    transfer.row_recipes(methods, Path(checkpoint), run_epochs * -(-n // batch_size), batch_size, lr)    # said in results
    settings = transfer.TransferSettings(Path(checkpoint), data, scenario, methods, list(range(first_seed, first_seed + count)),
                                         epochs or (1 if quick else 3), lr, batch_size, val_subset, bn_momentum, device,
                                         target, own_process=not one_process)
    record = transfer.settings_record(settings)

    def partial(state: dict) -> None:      # the runs done so far, written as a whole bench of them
        done = sorted({r["seed"] for r in state["results"][transfer.START]})
        refused = state.get("refused", {})
        seed_ended = all(len(rows) + len(refused.get(name, [])) == len(done) for name, rows in state["results"].items())
        transfer_report.write_outputs({**record, "seeds": done, "partial": True, **state}, target,
                                      figure=seed_ended)     # the figure and report once a seed, not every run

    with BenchStop() as stop:
        result = transfer.run_bench(settings, progress(quiet), partial, stop)
        if not stop.stopped:        # per planner budget, the best fixed set that fits it, under it
            from edge_sel.bench import transfer_front
            result = transfer_front.run_best_fixed(settings, result, last_k, progress(quiet), stop, partial)
    bench = {**record, "seeds": settings.seeds, **result}
    if stop.stopped:        # the runs finished before the stop, as a partial bench; no figure of them
        done = sorted({r["seed"] for r in result["results"][transfer.START]})
        transfer_report.write_outputs({**bench, "seeds": done, "partial": True}, target, figure=False)
        click.echo(f"bench transfer: {stop_words(result['stopped'])}; wrote {target / 'results.json'} (partial)",
                   err=True)
        sys.exit(stop.exit_code())
    written = transfer_report.write_outputs(bench, target)
    click.echo(written["table"])
    click.echo(f"bench transfer: {plural(len(methods), 'method')} x {plural(count, 'seed')} in {result['wall_s']:.0f} s; "
               f"wrote {target / 'table.md'}, {target / 'results.json'}, {', '.join(map(str, written['figures']))}, "
               f"{target / 'report.html'}")

