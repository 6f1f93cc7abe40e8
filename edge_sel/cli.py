"""The `edge-sel` command line: thin click wrappers over edge_sel.engine.runs.run."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from edge_sel.cli_interrupts import quiet_start_up_interrupts

quiet_start_up_interrupts()     # before click, torch and the rest are imported

from edge_sel.errors import InputError  # noqa: E402
from edge_sel.threads import omp_threads, passive_waiting  # noqa: E402

try:
    passive_waiting()           # before torch loads OpenMP, which reads the policy once
    omp_threads()               # and its count, which it refuses in a line of its own when unreadable
except InputError as e:
    print(f"edge-sel: error: {e}", file=sys.stderr)
    sys.exit(2)

import click  # noqa: E402

from edge_sel.version import __version__  # noqa: E402
from edge_sel.bench.cli import bench_group
from edge_sel.cli_base import NO_ARGS_IS_HELP, Group, one_line_warnings
from edge_sel.cli_options import (DATA, ENERGY, FINETUNE, FINETUNE_SECTIONS, HOME, NIGHT_SECTIONS, PRETRAIN,
                                  PRETRAIN_SECTIONS, SPEED, TRAIN, for_a_night, in_sections)
from edge_sel.config import TrainConfig
from edge_sel.demo import demo_cmd
from edge_sel.cli_monitor import monitor
from edge_sel.cli_deployed import deployed_group
from edge_sel.engine.machine.distributed import detect_world, under_torchrun
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.machine.device import pick_device
from edge_sel.engine.runs.run import finetune, prepare_finetune_config, pretrain, resume
from edge_sel.engine.runs.signals import exit_code_for
from edge_sel.errors import InputError
from edge_sel.export.cli import export_cmd
from edge_sel.fleet.cli import fleet_group
from edge_sel.methods.options import METHOD_OPTIONS, method_option_names
from edge_sel.methods.presets import default_lr
from edge_sel.predict.cli import predict_cmd
from edge_sel.models.spec import parse_model_args
from edge_sel.profiles.apply import OPTIONS as PROFILE_OPTIONS
from edge_sel.profiles.apply import announce_profile, given, profile_option, threads_for_command
from edge_sel.profiles.cli import profiles_group
from edge_sel.report.cli import report_cmd
from edge_sel.report.summary import energy_label, print_summary


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
# What a fine-tune's recipe (--preset adapt) also chooses: typed, the user's choice wins over it.
RECIPE_FIELDS = ("strategy", "sparsity", "bn_adapt", "val_subset")


def explicit_names(command: str) -> list[str]:
    """The options whose typed value a preset must keep, for `command`."""
    if command in ("finetune", "night"):
        return [*PRESET_FIELDS, *RECIPE_FIELDS, *method_option_names()]
    return list(PRESET_FIELDS)


def given_on_command_line() -> list[str]:
    """Options typed by the user: a preset never overrides them (profile values it may), and only
    they are refused when the run would ignore them (a profile's target activation is not)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    return [name for name in explicit_names(ctx.command.name)
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]


def build_config(kw: dict, **extra) -> TrainConfig:
    lr = kw["lr"] if kw["lr"] is not None else default_lr(kw["optimizer"])
    extra.setdefault("explicit", given_on_command_line())
    return TrainConfig(epochs=kw["epochs"], batch_size=kw["batch_size"], optimizer=kw["optimizer"], lr=lr,
                       momentum=kw["momentum"], weight_decay=kw["weight_decay"], schedule=kw["schedule"],
                       warmup_epochs=kw["warmup_epochs"], label_smoothing=kw["label_smoothing"],
                       augment=not kw["no_augment"], seed=kw["seed"], device=kw["device"],
                       precision=kw["precision"], checkpoint_every=kw["checkpoint_every"],
                       memory_format=kw["memory_format"], eval_batch_size=kw["eval_batch_size"],
                       eval_every=kw["eval_every"], eval_test=kw["eval_test"], val_subset=kw["val_subset"],
                       sync_every=kw["sync_every"], compile=kw["compile_model"], **extra)


def build_data(kw: dict) -> DataOptions:
    return DataOptions(kw["dataset"], kw["data_dir"], kw["val_fraction"], kw["shard"], kw["subset"],
                       kw["per_class_cap"], kw["split_seed"], kw["image_size"], kw["shift"], kw["shift_seed"],
                       test_subset=kw.get("test_subset"))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edge-sel")
@click.option("--trust-model-code", is_flag=True,
              help="Let checkpoints rebuild models by importing code (a factory module, a model file from "
                   "elsewhere, torchvision, timm); without it only built-in models and model files a pretrain "
                   "on this machine named build [env var: EDGE_SEL_TRUST_MODEL_CODE=1].")
def cli(trust_model_code):
    """On-device fine-tuning whose savings are counted and measured."""
    one_line_warnings()
    if trust_model_code:
        import os

        from edge_sel.models.spec import TRUST_ENV
        os.environ[TRUST_ENV] = "1"


@cli.command("pretrain")
@in_sections(PRETRAIN_SECTIONS, PRETRAIN, DATA, TRAIN, SPEED, ENERGY)
def pretrain_cmd(model_name, model_args, init_weights, export_artifacts, anchors_per_class, fisher_samples, resume_dir,
                 **kw):
    """Train a model densely and write a warmup checkpoint (under torchrun: data-parallel, rank 0 writes)."""
    kw["quiet"] = kw["quiet"] or not detect_world().is_main     # one report, from rank 0
    threads_for_command(kw.pop("threads"))
    if resume_dir is not None:
        refuse_with_resume()
        return report_end(resume(resume_dir, kw["quiet"], phase="pretrain"), kw["quiet"])
    if export_artifacts:
        from edge_sel.backends.ort_env import require_ort
        require_ort("--export-artifacts")   # before training, not after
    require(epochs=kw["epochs"], out=kw["out"])
    energy = build_energy(kw)
    cfg = build_config(kw, anchors_per_class=anchors_per_class, fisher_samples=fisher_samples)
    summary = pretrain(model_name, build_data(kw), cfg, kw["out"], kw["overwrite"], kw["quiet"],
                       energy, model_args=parse_model_args(model_args), init_weights=init_weights)
    report_end(summary, kw["quiet"])
    if export_artifacts and detect_world().is_main:
        from edge_sel.export.cli import export_after_pretrain
        export_after_pretrain(kw["out"], kw["quiet"])


@cli.command("finetune")
@in_sections(FINETUNE_SECTIONS, FINETUNE, METHOD_OPTIONS, DATA, TRAIN, SPEED, ENERGY)
@profile_option
def finetune_cmd(checkpoint, resume_dir, **kw):
    """Fine-tune a warmup checkpoint on local data; records per epoch."""
    if under_torchrun():
        raise InputError("finetune is single-device: run it without torchrun (only pretrain is distributed)")
    threads_for_command(kw.pop("threads"))
    if resume_dir is not None:
        refuse_with_resume()
        summary = resume(resume_dir, kw["quiet"], phase="finetune")
        return report_end(summary, kw["quiet"])
    require(checkpoint=checkpoint, epochs=kw["epochs"], out=kw["out"])
    energy = build_energy(kw)
    cfg = prepare_finetune_config(build_finetune_config(kw), kw["quiet"])
    data = build_data(kw).check()
    pick_device(cfg.device)
    announce_profile()          # options checked: a bad one has printed its error alone
    summary = finetune(checkpoint, data, cfg, kw["out"], kw["overwrite"], kw["quiet"], energy,
                       profile=kw.pop("profile_record", None))
    report_end(summary, kw["quiet"])


# A fine-tune's options that are TrainConfig fields of the same name (the command line's and the
# Python API's: one list, so that neither drops a lever).
FINETUNE_FIELDS = ("strategy", "sparsity", "backend", "bn_mode", "bn_adapt", "keep", "max_forgetting", "ewc", "replay",
                   "bn_anchor_share", "reset_forgetting", "bn_conditions", "bn_condition_images",
                   "bn_condition_radius")
# Options whose config field has another name.
RENAMED_FIELDS = {"memory_budget": "memory_budget_mb"}


def build_finetune_config(kw: dict) -> TrainConfig:
    """A fine-tune's configuration from its options (finetune's and a night's: one place, so that
    the two commands cannot drift apart)."""
    chosen = {name: kw.pop(name) for name in FINETUNE_FIELDS}
    chosen.update({field: kw.pop(option) for option, field in RENAMED_FIELDS.items()})
    artifacts = kw.pop("artifacts")
    method = {name: kw.pop(name) for name in method_option_names()}
    return build_config(kw, artifacts=str(artifacts) if artifacts else None, method=method, **chosen)


@cli.command("night")
@in_sections(NIGHT_SECTIONS, HOME, for_a_night(FINETUNE), METHOD_OPTIONS, for_a_night(DATA), for_a_night(TRAIN),
             SPEED, ENERGY)
@profile_option(default="auto", envvar="EDGE_SEL_PROFILE")
def night_cmd(home, runs, deployed, warmup, **kw):
    """One night of a device: resume the latest run if it was cut off, else fine-tune the deployed
    model (the warmup while nothing is deployed) on tonight's data in a new run named by the UTC
    start time; then promote a finished run if it beats the deployed model.

    Exit 0: the night's work is done (promoted, or judged and not promoted); 130/143: stopped by
    SIGINT/SIGTERM and checkpointed (the next night resumes it); 2: bad options or input; 1: anything
    else. stdout is the journal: one line per step, epoch and phase."""
    from edge_sel.engine.night.life import Home, night
    if under_torchrun():
        raise InputError("night is single-device: run it without torchrun")
    threads_for_command(kw.pop("threads"))
    if kw["dataset"] is None:
        kw["dataset"] = f"folder:{Path(home) / 'data'}"
    quiet = kw["quiet"]
    energy = build_energy(kw)
    cfg = build_finetune_config(kw)

    def say(line: str) -> None:     # the night checks its options before it first says anything
        announce_profile()
        click.echo(line)
    profile = kw.pop("profile_record", None)
    result = night(Home.at(home, runs, deployed, warmup, said=places_said()), build_data(kw), cfg, energy,
                   profile=profile, quiet=quiet, say=say, trained=lambda summary: print_summary(summary, quiet=quiet),
                   given=settings_given(profile))
    summary = result.summary
    if result.decision is None:
        click.echo(f"interrupted: state checkpointed; the next night resumes {result.run_dir}")
        sys.exit(result.exit_status)
    if summary.get("stop_reason") == "energy_budget":
        click.echo("stopped before the energy budget would be exceeded; records and checkpoint are written")
    click.echo(decision_line(result.decision, result.run_dir))
    cost = result.cost
    joules = "energy not measured" if cost["energy_all_j"] is None else \
        f"{cost['energy_all_j']:.1f} J {energy_label(cost['energy_method'])}"
    click.echo(f"edge-sel nightly: the night all in: {cost['flops_all'] / 1e9:.2f} GFLOP, {joules}, "
               f"{cost['wall_all_s']:.1f} s (the run's totals and promote's whole check)")


# Options whose TrainConfig field has another name.
FIELD_OF_OPTION = {"no_augment": "augment", "compile_model": "compile"}


def settings_given(profile: dict | None) -> set[str]:
    """The settings the user set: options typed or from the environment, and a profile's."""
    ctx = click.get_current_context()
    names = {p.name for p in ctx.command.params if given(ctx, p.name)}
    names |= {PROFILE_OPTIONS[field][0] for field in (profile or {}).get("applied", {}) if field in PROFILE_OPTIONS}
    return {FIELD_OF_OPTION.get(name, name) for name in names}


def places_said() -> dict:
    """How each of a night's places was set: its option, its environment variable, or under --home
    (by the option or EDGE_SEL_HOME), for errors to name what the user wrote."""
    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params}
    sources = click.core.ParameterSource

    def said(name: str) -> str:
        source = ctx.get_parameter_source(name)
        if source == sources.ENVIRONMENT:
            return params[name].envvar
        if source == sources.COMMANDLINE:
            return params[name].opts[0]
        return f"{said('home')}/{name}" if name != "home" else "--home"
    return {name: said(name) for name in ("runs", "deployed", "warmup")}


def refuse_with_resume() -> None:
    """A resumed run continues with the options it was started with: others given now would be
    silently ignored, so they are refused (--quiet only changes what is printed; --threads how fast
    it runs, and its float sums where it differs from the count the run recorded and keeps)."""
    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params
             if p.name not in ("resume_dir", "quiet", "profile", "threads")
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise InputError(f"--resume: {', '.join(given)} cannot change a resumed run; it continues with the "
                         f"options it was started with (its config.json)")


def require(**values) -> None:
    for name, value in values.items():
        if value is None:
            raise InputError(f"missing option '--{name}'")


def report_end(summary: dict, quiet: bool) -> None:
    """The closing lines; a run stopped by a signal then exits 130 (SIGINT) or 143 (SIGTERM), as a
    shell and systemd expect of a clean stop."""
    print_summary(summary, quiet=quiet)
    if summary.get("stop_reason") == "interrupted":
        click.echo(f"interrupted: state checkpointed; continue with: edge-sel {summary['phase']} --resume "
                   f"{summary['run_dir']}")
        sys.exit(exit_code_for(getattr(signal, summary.get("stop_signal") or "SIGINT")))
    elif summary.get("stop_reason") == "energy_budget":
        click.echo("stopped before the energy budget would be exceeded; records and checkpoint are written")


@cli.command("shift")
@click.option("--dataset", default="digits", show_default=True, help="digits | cifar10 | synthetic | folder:PATH | pack:PATH")
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
    from edge_sel.data.sources import source_paths
    from edge_sel.data.folder import CONTACT_SHEET
    from edge_sel.data.write_folder import contact_sheet, write_image_folder
    from edge_sel.core.outputs import check_out_dir, staged_out_dir
    shift = parse_shift(spec)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive number of images, got {limit}")
    out = check_out_dir(out, overwrite, "shift", source_paths(dataset, data_dir))
    train_full, test = load_source(dataset, data_dir)
    # The whole training part (no validation held out) shifted as a fine-tune would see it.
    shifted = apply_shift(make_splits(train_full, test, val_fraction=0.0), shift, shift_seed)
    counts = {}
    with staged_out_dir(out, "shift") as staging:
        if split in ("train", "all"):
            counts["train"] = write_image_folder(shifted.train, staging / "train", limit)
        if split in ("test", "all"):
            counts["test"] = write_image_folder(shifted.test, staging / "test", limit)
        contact_sheet(train_full, staging / CONTACT_SHEET, seed=shift_seed)
    click.echo(f"wrote {', '.join(f'{n} {k} images' for k, n in counts.items())} to {out} "
               f"(and contact_sheet.png: every corruption at severities 1-5)")


@cli.command("trigger")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="The deployed model.")
@click.option("--dataset", default="digits", show_default=True, help="digits | cifar10 | synthetic | folder:PATH | pack:PATH")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where the CIFAR-10 archive lives.")
@click.option("--shard", default=None, help="Stratified shard K/N of the training part, e.g. 1/2.")
@click.option("--subset", type=int, default=None, help="Class-balanced subset of N scenes.")
@click.option("--shift", "spec", default="frames=10", show_default=True,
              help="The stream (finetune --shift grammar; frames=F[:scene|shuffled] makes one).")
@click.option("--shift-seed", type=int, default=0, show_default=True, help="Seed of the shift.")
@click.option("--budget-frames", type=int, default=None, help="Keep at most N frames.")
@click.option("--budget-joules", type=float, default=None,
              help="Keep the frames that training on them tonight affords: J joules at the joules per FLOP "
                   "measured over the trigger's forward passes.")
@click.option("--significance", type=click.Choice(["entropy", "none"]), default="none", show_default=True,
              help="Per frame: none (novelty alone, no forward pass: the widest scene coverage), or the model's "
                   "predictive entropy times novelty (one counted forward pass per frame: uncertain frames first).")
@click.option("--novelty", type=float, default=1.0, show_default=True, help="Weight of the novelty signal (0 to 1).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Forward-pass batch size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the stream order and the gate.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to create: kept.csv (chosen frames, scores) and trigger.json (coverage, cost).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
def trigger_cmd(checkpoint, dataset, data_dir, shard, subset, spec, shift_seed, budget_frames, budget_joules,
                significance, novelty, batch_size, seed, out, overwrite):
    """The attention trigger: the Sundew gate with novelty chooses which frames of a stream to keep
    under a budget, and reports the scenes they cover against a random choice of the same size."""
    from edge_sel.engine.machine.energy_setup import EnergyOptions
    from edge_sel.engine.runs.data_options import DataOptions
    from edge_sel.core.outputs import check_out_dir, start_out_dir
    from edge_sel.data.sources import source_paths
    from edge_sel.engine.evaluation.bn_bank import attach_saved_bank
    from edge_sel.engine.night.trigger import run_trigger
    from edge_sel.models import load_checkpoint
    for option, value in (("--budget-frames", budget_frames), ("--budget-joules", budget_joules),
                          ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise InputError(f"{option} must be > 0, got {value}")
    if not 0 <= novelty <= 1:
        raise InputError(f"--novelty must be in [0, 1], got {novelty}")
    if (budget_frames is None) == (budget_joules is None):
        raise InputError("trigger: give one budget, --budget-frames N or --budget-joules J")
    if budget_joules is not None and significance == "none":
        raise InputError("--budget-joules: needs --significance entropy (joules per FLOP are measured over its "
                         "forward passes)")
    out = check_out_dir(out, overwrite, "trigger", [("--checkpoint", checkpoint), *source_paths(dataset, data_dir)])
    model, card = load_checkpoint(checkpoint)
    # The stream is the whole training part (or its shard): nothing is held out for validation.
    splits = DataOptions(dataset, data_dir, val_fraction=0.0, shard=shard, subset=subset, shift=spec,
                         shift_seed=shift_seed).load()
    if splits.train.input_shape != list(card.input_shape):
        raise InputError(f"--dataset: images are {splits.train.input_shape}, the checkpoint expects {card.input_shape}")
    bank = attach_saved_bank(model.eval(), checkpoint, card)     # the deployed model as it predicts
    start_out_dir(out, "trigger")
    meter = EnergyOptions().open()
    try:
        result = run_trigger(model, card.mean, card.std, splits.train, budget_frames, budget_joules, significance,
                             novelty, batch_size, seed, meter, out, bank)
    finally:
        meter.close()
    r, c = result["random_same_size"], result["cost"]
    click.echo(f"kept {result['kept']} of {result['frames_seen']} frames: {result['scenes_covered']} of "
               f"{result['scenes_seen']} scenes (random choice of {result['kept']}: {r['mean']:.1f}, 95% of draws "
               f"{r['p2.5']:.0f}-{r['p97.5']:.0f})")
    click.echo(f"choosing cost {c['flops_total'] / 1e9:.3f} GFLOP counted (forward {c['flops_forward'] / 1e9:.3f}, "
               f"novelty {c['flops_novelty'] / 1e9:.4f}), {c['energy_j']:.2f} J ({c['energy_source']}, "
               f"{c['energy_method']}); wrote {out / 'kept.csv'}, {out / 'trigger.json'}")


@cli.command("promote")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--deployed", type=click.Path(path_type=Path), required=True,
              help="The device's deployed checkpoint (a link to a versioned directory; a plain directory is "
                   "migrated), replaced only by a run that beats it on the run's local validation data.")
@click.option("--force", is_flag=True,
              help="Judge a pretrain directory, or a run that did not start from the deployed model, all the same "
                   "(it must still beat the deployed model).")
@click.option("--max-forgetting", type=float, default=None, metavar="P",
              help="Points of guard-anchor accuracy below the source model a deployed model may lose "
                   "[default: the run's own --max-forgetting].")
def promote_cmd(run_dir, deployed, force, max_forgetting):
    """Deploy a run's output model if it beats the deployed model itself on the run's validation data
    and does not forget more than --max-forgetting points on the guard anchors (a deployed model that
    has forgotten more is replaced by a run's model within the limit).

    Exit 0: promoted, or already deployed (nothing written); 3: judged and not promoted (not a
    failure); 2: bad input; 1: the swap failed (the deployed model is unchanged). Every decision is
    appended to the deployed model's history: `edge-sel deployed history`."""
    from edge_sel.config import check_points
    from edge_sel.engine.night.promote import NOT_PROMOTED_EXIT, promote
    if max_forgetting is not None:
        check_points("--max-forgetting", max_forgetting)
    decision = promote(run_dir, deployed, force, max_forgetting=max_forgetting)
    click.echo(decision_line(decision, run_dir))
    if not decision.promote and decision.rule != "already-deployed":
        sys.exit(NOT_PROMOTED_EXIT)


def decision_line(decision, run_dir) -> str:
    """promote's verdict in one line: the rule, why, and what validating the deployed model cost."""
    cost = decision.evaluation
    anchors = f" and {cost['anchor_samples']} guard anchors" if cost and cost.get("anchor_samples") else ""
    # The validation passes apart from the rest of the check (reading and shifting the data, loading
    # the model, re-estimating a bank): a meter's joules cover the whole check, not the passes alone.
    whole = "" if not cost or cost.get("total_s") is None else \
        (f"; the whole check {cost['total_s']:.1f} s with reading and shifting the data and loading the model"
         + (", re-estimating the bank" if cost.get("flops_bank_estimate") else "")
         + (f", {cost['energy_j']:.1f} J" if cost.get("energy_j") is not None else ""))
    checked = (f" [deployed model validated on {cost['samples']} samples{anchors}, {cost['flops'] / 1e9:.2f} GFLOP, "
               f"validation passes {cost['wall_s']:.1f} s{whole}]" if cost else "")
    if decision.promote:
        return f"promoted ({decision.rule}): {run_dir}: {decision.why}{checked}"
    if decision.rule == "already-deployed":
        return f"already deployed: {run_dir}: {decision.why}"
    return f"not promoted ({decision.rule}): {run_dir}: {decision.why}; the deployed model stays{checked}"


@cli.command("models")
@click.option("--measure", is_flag=True,
              help="Also time training and evaluation throughput on this machine (a few seconds per model).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model instead of the table.")
def models_cmd(measure, as_json):
    """List the built-in models: parameters and counted FLOPs per 32x32 image (10 classes); any other
    model is given to --model as package.module:callable or path/to/file.py:callable."""
    import json
    from edge_sel.bench.model_speed import counted, measured
    from edge_sel.models import MODELS
    if not as_json:
        click.echo(f"{'model':16s} {'parameters':>12s} {'MFLOPs fwd':>11s} {'MFLOPs step':>12s}"
                   + (f" {'train img/s':>12s} {'eval img/s':>11s}" if measure else ""))
    for name in MODELS:
        row = counted(name)
        if measure:
            row.update(measured(name))
        if as_json:
            click.echo(json.dumps(row))
            continue
        line = (f"{name:16s} {row['parameters']:>12,d} {row['flops_forward'] / 1e6:>11.1f} "
                f"{row['flops_train_step'] / 1e6:>12.1f}")
        if measure:
            line += f" {row['train_images_per_s']:>12.0f} {row['eval_images_per_s']:>11.0f}"
        click.echo(line)
    if measure and not as_json:
        click.echo(f"measured here: median of 5 steps, channels_last, training batch 128 (SGD step included), "
                   f"evaluation batch 256, {row['threads']} threads; FLOPs counted by torch.utils.flop_counter")


# The commands of other modules, registered here and nowhere else.
for command in (bench_group, demo_cmd, deployed_group, export_cmd, fleet_group, monitor, predict_cmd, profiles_group,
                report_cmd):
    cli.add_command(command)


def main():
    """Console entry point: click's own usage errors also become one line and exit 2."""
    signal.signal(signal.SIGINT, signal.default_int_handler)    # start-up is over (cli_interrupts.py)
    try:
        cli.main(prog_name="edge-sel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("edge-sel: aborted", err=True)
        sys.exit(130)
    except NO_ARGS_IS_HELP as e:      # a group named without a command: its help, as click prints it
        click.echo(e.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as e:
        click.echo(f"edge-sel: error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"edge-sel: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
