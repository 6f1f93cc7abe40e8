"""The `edge-sel` command line: thin click wrappers over edge_sel.engine.runs.run."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from edge_sel.cli_interrupts import quiet_start_up_interrupts

quiet_start_up_interrupts()     # before click, torch and the rest are imported

from edge_sel.errors import InputError  # noqa: E402
from edge_sel.huge_pages import large_blocks_in_huge_pages  # noqa: E402
from edge_sel.threads import omp_threads, passive_waiting  # noqa: E402

large_blocks_in_huge_pages()     # before torch's first CPU allocation, which reads the variable once

try:
    passive_waiting()           # before torch loads OpenMP, which reads the policy once
    omp_threads()               # and its count, which it refuses in a line of its own when unreadable
except InputError as e:
    print(f"edge-sel: error: {e}", file=sys.stderr)
    sys.exit(2)

import click  # noqa: E402

from edge_sel.version import __version__  # noqa: E402
from edge_sel.bench.cli import bench_group
from edge_sel.bench.cli_transfer import transfer_cmd
from edge_sel.cli_base import NO_ARGS_IS_HELP, Group, one_line_warnings
from edge_sel.cli_config import (build_config, build_data, build_energy, build_finetune_config, places_said,
                                 settings_given)
from edge_sel.cli_data import shift_cmd, trigger_cmd
from edge_sel.cli_options import (DATA, ENERGY, FINETUNE, FINETUNE_SECTIONS, HOME, NIGHT_SECTIONS, PRETRAIN,
                                  PRETRAIN_SECTIONS, SPEED, TRAIN, for_a_night, in_sections)
from edge_sel.cli_promote import decision_line, promote_cmd
from edge_sel.demo import demo_cmd
from edge_sel.cli_monitor import monitor
from edge_sel.cli_deployed import deployed_group
from edge_sel.engine.machine.distributed import detect_world, under_torchrun
from edge_sel.engine.machine.device import pick_device
from edge_sel.engine.runs.run import finetune, prepare_finetune_config, pretrain, resume
from edge_sel.engine.runs.signals import exit_code_for
from edge_sel.errors import InputError
from edge_sel.export.cli import export_cmd
from edge_sel.fleet.cli import fleet_group
from edge_sel.methods.options import METHOD_OPTIONS
from edge_sel.predict.cli import predict_cmd
from edge_sel.models.spec import parse_model_args
from edge_sel.profiles.apply import announce_profile, profile_option, threads_for_command
from edge_sel.profiles.cli import profiles_group
from edge_sel.report.cli import report_cmd
from edge_sel.report.summary import budget_stop_line, energy_label, print_summary

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
def pretrain_cmd(model_name, model_args, init_weights, pretrained, input_norm, export_artifacts, anchors_per_class,
                 fisher_samples, set_gains_steps, resume_dir, recipe, head_epochs, head_lr, head_bn_adapt, backbone_lr_scale,
                 bn_momentum, bn_stats, **kw):
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
    cfg = build_config(kw, anchors_per_class=anchors_per_class, fisher_samples=fisher_samples,
                       set_gains_steps=set_gains_steps,
                       head_epochs=head_epochs, head_lr=head_lr, head_bn_adapt=head_bn_adapt,
                       backbone_lr_scale=backbone_lr_scale, recipe=recipe,
                       bn_momentum=bn_momentum, bn_stats=bn_stats)
    summary = pretrain(model_name, build_data(kw), cfg, kw["out"], kw["overwrite"], kw["quiet"],
                       energy, model_args=parse_model_args(model_args), init_weights=init_weights,
                       pretrained=pretrained, input_norm=input_norm)
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
    if line := budget_stop_line(summary):
        click.echo(line)
    click.echo(decision_line(result.decision, result.run_dir))
    cost = result.cost
    joules = "energy not measured" if cost["energy_all_j"] is None else \
        f"{cost['energy_all_j']:.1f} J {energy_label(cost['energy_method'])}"
    click.echo(f"edge-sel nightly: the night all in: {cost['flops_all'] / 1e9:.2f} GFLOP, {joules}, "
               f"{cost['wall_all_s']:.1f} s (the run's totals and promote's whole check)")


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
    elif summary.get("late_stop_signal") and (stopped := shipping_stopped(summary)):
        # The checkpoint is whole; what it ships for devices is not: a stop, not a finished run.
        click.echo(f"stopped by {summary['late_stop_signal']}: the checkpoint is written; {stopped}")
        sys.exit(exit_code_for(getattr(signal, summary["late_stop_signal"])))
    elif line := budget_stop_line(summary):
        click.echo(line)


def shipping_stopped(summary: dict) -> str | None:
    """What a pretrain's shipping (anchors, recipes) left unfinished at a stop signal, or None."""
    said = []
    for label, key in (("anchors and Fisher information", "source_memory"), ("recipes", "set_gains")):
        block = summary.get(key) or {}
        why = block.get("partial") or block.get("none") or ""
        if "stop signal" in why:
            said.append(f"{label} {'partial' if block.get('partial') else 'not shipped'}")
    return ", ".join(said) or None


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
        click.echo(f"{'model':18s} {'parameters':>12s} {'MFLOPs fwd':>11s} {'MFLOPs step':>12s}"
                   + (f" {'train img/s':>12s} {'eval img/s':>11s}" if measure else ""))
    for name in MODELS:
        row = counted(name)
        if measure:
            row.update(measured(name))
        if as_json:
            click.echo(json.dumps(row))
            continue
        line = (f"{name:18s} {row['parameters']:>12,d} {row['flops_forward'] / 1e6:>11.1f} "
                f"{row['flops_train_step'] / 1e6:>12.1f}")
        if measure:
            line += f" {row['train_images_per_s']:>12.0f} {row['eval_images_per_s']:>11.0f}"
        click.echo(line)
    if measure and not as_json:
        click.echo(f"measured here: median of 5 steps, channels_last, training batch 128 (SGD step included), "
                   f"evaluation batch 256, {row['threads']} threads; FLOPs counted by torch.utils.flop_counter")


# The commands of other modules, registered here and nowhere else.
for command in (bench_group, demo_cmd, deployed_group, export_cmd, fleet_group, monitor, predict_cmd, profiles_group,
                promote_cmd, report_cmd, shift_cmd, trigger_cmd):
    cli.add_command(command)
bench_group.add_command(transfer_cmd)


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
