"""The `edge-sel` command line: thin click wrappers over edge_sel.engine.run."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge_sel import __version__
from edge_sel.bench.cli import bench_group
from edge_sel.cli_base import Group
from edge_sel.config import EVAL_TEST, MEMORY_FORMATS, OPTIMIZERS, SCHEDULES, TrainConfig
from edge_sel.demo import demo_cmd
from edge_sel.energy import METER_NAMES
from edge_sel.energy.monitor_cli import monitor
from edge_sel.engine.distributed import detect_world, under_torchrun
from edge_sel.engine.energy_setup import EnergyOptions
from edge_sel.engine.run import DataOptions, finetune, pretrain, resume
from edge_sel.errors import InputError
from edge_sel.export.cli import export_cmd
from edge_sel.methods import STRATEGIES
from edge_sel.methods.options import RegistryChoice, method_option_names, method_options
from edge_sel.methods.presets import default_lr
from edge_sel.profiles.apply import profile_option
from edge_sel.profiles.cli import profiles_group
from edge_sel.report.cli import report_cmd
from edge_sel.report.summary import print_summary


def data_options(fn):
    options = [
        click.option("--dataset", default="digits", show_default=True,
                     help="digits | cifar10 | synthetic | folder:PATH"),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                     help="Where the CIFAR-10 archive lives (cifar-10-batches-py)."),
        click.option("--val-fraction", type=float, default=0.1, show_default=True,
                     help="Stratified share of the training part held out for validation."),
        click.option("--shard", default=None, help="Use stratified shard K/N of the training part, e.g. 0/2."),
        click.option("--subset", type=int, default=None, help="Class-balanced subset of N training samples."),
        click.option("--per-class-cap", type=int, default=None, help="At most N training samples per class."),
        click.option("--split-seed", type=int, default=0, show_default=True,
                     help="Seed of the validation split and shards (a fine-tune must use its pretrain's)."),
        click.option("--image-size", type=int, default=None, help="Resize folder images to S x S."),
        click.option("--shift", default=None,
                     help="Shift the local data: corrupt=NAME:SEV; label-noise=RATE[:val]; imbalance=longtail:RATIO; "
                          "classes=A,B (items joined by ';'). Records then add clean_test_acc."),
        click.option("--shift-seed", type=int, default=0, show_default=True,
                     help="Seed of which samples a shift hits and how."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def train_options(fn):
    options = [
        click.option("--epochs", type=int, default=None, help="Epochs to train (required)."),
        click.option("--batch-size", type=int, default=128, show_default=True, help="Training batch size."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True,
                     help="Optimizer (sgd with Nesterov momentum, adam, adamw)."),
        click.option("--lr", type=float, default=None, help="Base learning rate [0.05 sgd, 1e-3 adam]."),
        click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum."),
        click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="Weight decay (L2)."),
        click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
                     help="Learning-rate schedule over training progress (shared by gated and dense runs)."),
        click.option("--warmup-epochs", type=float, default=0.0, show_default=True,
                     help="Epochs of linear learning-rate warmup."),
        click.option("--label-smoothing", type=float, default=0.0, show_default=True,
                     help="Label smoothing of the cross-entropy loss."),
        click.option("--no-augment", is_flag=True, help="Disable random crops and flips."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of initialisation, data order, augmentation and gating."),
        click.option("--device", default="auto", show_default=True, help="cpu | cuda | mps | auto"),
        click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA."),
        click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory to create (required)."),
        click.option("--checkpoint-every", type=int, default=200, show_default=True,
                     help="Steps between full-state checkpoints inside an epoch (0: epoch ends only)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing --out directory."),
        click.option("--quiet", is_flag=True, help="No progress bars or summary table."),
        *speed_options(),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def speed_options() -> list:
    return [
        click.option("--memory-format", type=click.Choice(MEMORY_FORMATS), default="auto", show_default=True,
                     help="Activation layout of conv models; auto times both on this device first."),
        click.option("--eval-batch-size", type=int, default=0, show_default=True,
                     help="Evaluation batch size (0: the fastest of a few, measured on this device)."),
        click.option("--eval-every", type=int, default=1, show_default=True,
                     help="Validate every K epochs (the last epoch always)."),
        click.option("--eval-test", type=click.Choice(EVAL_TEST), default="end", show_default=True,
                     help="Test set after the last epoch only, or after every validation."),
        click.option("--val-subset", type=int, default=0, show_default=True,
                     help="Validate on N samples of the validation split (0: all of it)."),
        click.option("--sync-every", type=int, default=0, show_default=True,
                     help="Steps between host reads of loss sums (0: 1 on CPU, 32 on a GPU)."),
        click.option("--compile", "compile_model", is_flag=True,
                     help="torch.compile the model; compile time is counted in the first epoch."),
    ]


def energy_options(fn):
    options = [
        click.option("--meter", "meters", multiple=True, type=click.Choice(METER_NAMES),
                     help="Energy meter to use (repeatable). Default: automatic."),
        click.option("--watts-per-core", type=float, default=None,
                     help="Watts per busy core for the labelled estimate (no sensor)."),
        click.option("--idle-baseline", type=float, default=0.0, show_default=True,
                     help="Measure idle power for S seconds first; records then add net-of-idle joules."),
        click.option("--energy-budget", type=float, default=None,
                     help="Stop cleanly (records and checkpoint written) before the measured total passes J joules."),
        click.option("--max-temp", type=float, default=None,
                     help="Thermal guard: pause between steps above this temperature (C)."),
        click.option("--max-pause", type=float, default=600.0, show_default=True,
                     help="Longest single thermal pause in seconds; then training resumes (a stuck sensor "
                          "must not stall the run) and the record counts it in thermal_pauses_capped."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def build_energy(kw: dict) -> EnergyOptions:
    energy = EnergyOptions(meters=list(kw.pop("meters")), watts_per_core=kw.pop("watts_per_core"),
                           idle_baseline_s=kw.pop("idle_baseline"), budget_j=kw.pop("energy_budget"),
                           max_temp_c=kw.pop("max_temp"), max_pause_s=kw.pop("max_pause"))
    if "rails" in kw:          # from a device profile (--profile); no option of their own
        energy.rails = list(kw.pop("rails"))
    if "hysteresis" in kw:
        energy.hysteresis_c = kw.pop("hysteresis")
    return energy


PRESET_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs", "label_smoothing",
                 "batch_size")


def given_on_command_line() -> list[str]:
    """Options typed by the user: a preset never overrides them (profile values it may), and only
    they are refused when the run would ignore them (a profile's target activation is not)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    names = [*PRESET_FIELDS, *(method_option_names() if ctx.command.name == "finetune" else [])]
    return [name for name in names if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]


def build_config(kw: dict, **extra) -> TrainConfig:
    lr = kw["lr"] if kw["lr"] is not None else default_lr(kw["optimizer"])
    extra.setdefault("explicit", given_on_command_line())
    return TrainConfig(epochs=kw["epochs"], batch_size=kw["batch_size"], optimizer=kw["optimizer"], lr=lr,
                       momentum=kw["momentum"], weight_decay=kw["weight_decay"], schedule=kw["schedule"],
                       warmup_epochs=kw["warmup_epochs"], label_smoothing=kw["label_smoothing"],
                       augment=not kw["no_augment"], seed=kw["seed"], device=kw["device"],
                       amp=not kw["no_amp"], checkpoint_every=kw["checkpoint_every"],
                       memory_format=kw["memory_format"], eval_batch_size=kw["eval_batch_size"],
                       eval_every=kw["eval_every"], eval_test=kw["eval_test"], val_subset=kw["val_subset"],
                       sync_every=kw["sync_every"], compile=kw["compile_model"], **extra)


def build_data(kw: dict) -> DataOptions:
    return DataOptions(kw["dataset"], kw["data_dir"], kw["val_fraction"], kw["shard"], kw["subset"],
                       kw["per_class_cap"], kw["split_seed"], kw["image_size"], kw["shift"], kw["shift_seed"])


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-sel")
def cli():
    """On-device fine-tuning whose savings are counted and measured."""


@cli.command("pretrain")
@click.option("--model", "model_name", default="edgecnn", show_default=True, help="edgecnn | resnet18_cifar")
@click.option("--export-artifacts", is_flag=True, help="Then export model.onnx and ORT training artifacts to OUT/artifacts.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              help="Continue the interrupted pretrain in this directory with the options it was started with.")
@data_options
@train_options
@energy_options
def pretrain_cmd(model_name, export_artifacts, resume_dir, **kw):
    """Train a model densely and write a warmup checkpoint (under torchrun: data-parallel, rank 0 writes)."""
    kw["quiet"] = kw["quiet"] or not detect_world().is_main     # one report, from rank 0
    if resume_dir is not None:
        refuse_with_resume()
        return report_end(resume(resume_dir, kw["quiet"], phase="pretrain"), kw["quiet"])
    if export_artifacts:
        from edge_sel.backends.ort_env import require_ort
        require_ort("--export-artifacts")   # before training, not after
    require(epochs=kw["epochs"], out=kw["out"])
    energy = build_energy(kw)
    summary = pretrain(model_name, build_data(kw), build_config(kw), kw["out"], kw["overwrite"], kw["quiet"],
                       energy)
    report_end(summary, kw["quiet"])
    if export_artifacts and detect_world().is_main:
        from edge_sel.export.cli import export_after_pretrain
        export_after_pretrain(kw["out"], kw["quiet"])


@cli.command("finetune")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Warmup checkpoint directory (required unless --resume).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              help="Continue the interrupted run in this directory with the options it was started with.")
@click.option("--strategy", type=RegistryChoice(STRATEGIES), default="dense", show_default=True,
              help="Which samples are computed.")
@click.option("--sparsity", default=None,
              help="Which parameters change: none | mask | layers | bn-affine (BatchNorm scales and shifts and the head) "
                   "[default: the strategy's (sel: layers), else none].")
@click.option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True,
              help="What runs the training step: PyTorch, or ONNX Runtime training artifacts (--artifacts).")
@click.option("--artifacts", type=click.Path(path_type=Path), default=None, help="ORT training artifacts (--backend ort).")
@click.option("--bn-mode", type=click.Choice(["train", "eval"]), default=None,
              help="BatchNorm while training: train (batch stats) or eval (frozen stats) [default: train; "
                   "ort: the artifacts' mode].")
@click.option("--bn-adapt", type=int, default=0, show_default=True,
              help="First re-estimate BatchNorm statistics on N unlabelled local training images (forward passes "
                   "only; with --epochs 0, the whole adaptation).")
@click.option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Output model: the best by local validation accuracy among the starting checkpoint and "
                   "every epoch (a run that does not beat the checkpoint hands it back unchanged), or the last epoch.")
@method_options
@data_options
@train_options
@energy_options
@profile_option
def finetune_cmd(checkpoint, resume_dir, strategy, sparsity, backend, artifacts, bn_mode, bn_adapt, keep, **kw):
    """Fine-tune a warmup checkpoint on local data; records per epoch."""
    if under_torchrun():
        raise InputError("finetune is single-device: run it without torchrun (only pretrain is distributed)")
    if resume_dir is not None:
        refuse_with_resume()
        summary = resume(resume_dir, kw["quiet"], phase="finetune")
        return report_end(summary, kw["quiet"])
    require(checkpoint=checkpoint, epochs=kw["epochs"], out=kw["out"])
    energy = build_energy(kw)
    method = {name: kw.pop(name) for name in method_option_names()}
    cfg = build_config(kw, strategy=strategy, sparsity=sparsity, backend=backend,
                       artifacts=str(artifacts) if artifacts else None, method=method, bn_mode=bn_mode,
                       keep=keep, bn_adapt=bn_adapt)
    summary = finetune(checkpoint, build_data(kw), cfg, kw["out"], kw["overwrite"], kw["quiet"], energy,
                       profile=kw.pop("profile_record", None))
    report_end(summary, kw["quiet"])


def refuse_with_resume() -> None:
    """A resumed run continues with the options it was started with: others given now would be
    silently ignored, so they are refused (--quiet only changes what is printed)."""
    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params
             if p.name not in ("resume_dir", "quiet", "profile")
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise InputError(f"--resume: {', '.join(given)} cannot change a resumed run; it continues with the "
                         f"options it was started with (its config.json)")


def require(**values) -> None:
    for name, value in values.items():
        if value is None:
            raise InputError(f"missing option '--{name}'")


def report_end(summary: dict, quiet: bool) -> None:
    print_summary(summary, quiet=quiet)
    if summary.get("stop_reason") == "interrupted":
        click.echo(f"interrupted: state checkpointed; continue with: edge-sel finetune --resume {summary['run_dir']}")
    elif summary.get("stop_reason") == "energy_budget":
        click.echo("stopped before the energy budget would be exceeded; records and checkpoint are written")


@cli.command("shift")
@click.option("--dataset", default="digits", show_default=True, help="digits | cifar10 | synthetic | folder:PATH")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where the CIFAR-10 archive lives.")
@click.option("--shift", "spec", required=True, help="The shift to apply (same grammar as finetune --shift).")
@click.option("--shift-seed", type=int, default=0, show_default=True, help="Seed of the shift.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all", show_default=True,
              help="Which split to write (train holds the training and validation samples).")
@click.option("--limit", type=int, default=None, help="At most N images per class and split.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Image folder to create: OUT/train/<class>/, OUT/test/<class>/, and contact_sheet.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
def shift_cmd(dataset, data_dir, spec, shift_seed, split, limit, out, overwrite):
    """Write a shifted copy of a dataset as an image folder (readable as --dataset folder:OUT)."""
    from edge_sel.data import load_source, make_splits
    from edge_sel.data.shift import apply_shift, parse_shift
    from edge_sel.data.write_folder import contact_sheet, write_image_folder
    from edge_sel.engine.run import check_out_dir, start_out_dir
    shift = parse_shift(spec)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive number of images, got {limit}")
    out = check_out_dir(out, overwrite)
    train_full, test = load_source(dataset, data_dir)
    # The whole training part (no validation held out) shifted as a fine-tune would see it.
    shifted = apply_shift(make_splits(train_full, test, val_fraction=0.0), shift, shift_seed)
    start_out_dir(out)
    counts = {}
    if split in ("train", "all"):
        counts["train"] = write_image_folder(shifted.train, out / "train", limit)
    if split in ("test", "all"):
        counts["test"] = write_image_folder(shifted.test, out / "test", limit)
    contact_sheet(train_full, out / "contact_sheet.png", seed=shift_seed)
    click.echo(f"wrote {', '.join(f'{n} {k} images' for k, n in counts.items())} to {out} "
               f"(and contact_sheet.png: every corruption at severities 1-5)")


@cli.command("promote")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--deployed", type=click.Path(path_type=Path), required=True,
              help="The device's deployed checkpoint directory, replaced only if the run improved on its start.")
def promote_cmd(run_dir, deployed):
    """Deploy a fine-tune's output model, unless the run did not finish or did not beat its start."""
    from edge_sel.engine.promote import promote
    replaced, why = promote(run_dir, deployed)
    click.echo(("promoted: " if replaced else "not promoted: ") + why)


@cli.command("models")
def models_cmd():
    """List the models and their parameter counts."""
    from edge_sel.models import model_table
    for name, n in model_table():
        click.echo(f"{name:16s} {n:>12,d} parameters (10 classes, 3 channels)")


# The commands of other modules, registered here and nowhere else.
for command in (bench_group, demo_cmd, export_cmd, monitor, profiles_group, report_cmd):
    cli.add_command(command)


def main():
    """Console entry point: click's own usage errors also become one line and exit 2."""
    try:
        cli.main(prog_name="edge-sel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("edge-sel: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        click.echo(f"edge-sel: error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"edge-sel: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
