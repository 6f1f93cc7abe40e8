"""The Python API: `edge_sel.pretrain(...)` and `edge_sel.finetune(...)`, the two commands as
functions. They take exactly the options of `edge-sel pretrain` and `edge-sel finetune`, by the
names the commands give them (`--batch-size` is `batch_size`), with the same defaults and the same
checks: both are read from the commands' own option declarations, not from a second list.
Data may be a dataset spec ("digits", "folder:PATH", ...), (images, labels) tensors or a torch
Dataset; a model a registered name, a factory spec or an nn.Module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from edge_sel.errors import InputError, parse_json
from edge_sel.option_names import closest

# Options that only make sense on a command line (the API has its own way to say them).
NOT_IN_API = {"profile", "resume_dir", "export_artifacts"}


@dataclass
class RunResult:
    """What a run left behind: its directory (records, summary, the output checkpoint), the epoch
    records and the summary."""
    run_dir: Path
    summary: dict
    records: list[dict]

    @property
    def checkpoint(self) -> Path:
        """The output model (model.safetensors + model.json): a finetune's `checkpoint=`."""
        return self.run_dir

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"


def _command(name: str) -> click.Command:
    from edge_sel.cli import cli
    return cli.commands[name]


def option_defaults(command: str) -> dict:
    """Every option of `edge-sel COMMAND` by its Python name, with its default as the command
    itself fills it in when the option is not given."""
    cmd = _command(command)
    with cmd.make_context(command, [], resilient_parsing=True) as ctx:
        return {name: value for name, value in ctx.params.items() if name not in NOT_IN_API}


def resolve_options(command: str, given: dict) -> tuple[dict, list[str]]:
    """The defaults with `given` applied, each value checked and converted by its option's own click
    type (a bad one is an InputError naming the option); and the names given."""
    cmd = _command(command)
    ctx = click.Context(cmd)
    params = {p.name: p for p in cmd.params if isinstance(p, click.Option) and p.name not in NOT_IN_API}
    values = option_defaults(command)
    for name, value in given.items():
        if name not in params:
            close = closest(name, list(params))
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TypeError(f"edge_sel.{command}() got an unknown option {name!r}{hint}")
        param = params[name]
        if param.multiple and isinstance(value, (str, Path)):
            value = [value]
        try:
            values[name] = param.type_cast_value(ctx, value) if value is not None else None
        except click.BadParameter as e:
            raise InputError(f"{param.opts[0]}: {e.message}") from None
    return values, list(given)


def _data(data, test, kw: dict, class_names):
    """The run's DataOptions, and None for a dataset spec (the engine loads it) or else the splits
    of the given objects, made the way the engine splits a named dataset."""
    from edge_sel.cli_config import build_data
    if isinstance(data, (str, Path)):
        if test is not None:
            raise InputError("test: a named dataset brings its own test split")
        kw["dataset"] = str(data)
        return build_data(kw), None
    from edge_sel.data.objects import as_indexed
    from edge_sel.data.sources import _carve_test
    train_full = as_indexed(data, class_names, "data")
    if test is None:
        train_full, test_ds = _carve_test(train_full)       # a held-out test part, as digits does
    else:
        test_ds = as_indexed(test, train_full.class_names, "test")
    kw["dataset"] = f"python:{train_full.name}"
    options = build_data(kw)
    return options, options.split(train_full, test_ds)


def _result(summary: dict) -> RunResult:
    run_dir = Path(summary["run_dir"])
    path = run_dir / "metrics.jsonl"
    records = [parse_json(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return RunResult(run_dir, summary, records)


def _explicit(kw_names: list[str], command: str) -> list[str]:
    from edge_sel.cli_config import explicit_names
    names = explicit_names(command)
    return [n for n in kw_names if n in names]


def pretrain(model="edgecnn", data="digits", *, out, test=None, class_names=None, model_args: dict | None = None,
             quiet: bool = True, **options) -> RunResult:
    """Train `model` densely on `data` into the run directory `out`; same options as
    `edge-sel pretrain` (`epochs` is required). `model`: a registered name, a factory spec or an
    nn.Module (its class must be importable, so later runs can rebuild it; its weights are the
    starting weights)."""
    from edge_sel.cli_config import build_config, build_energy
    from edge_sel.engine.runs.run import pretrain as run_pretrain
    from edge_sel.threads import torch_threads
    from edge_sel.models.spec import parse_model_args
    kw, given = resolve_options("pretrain", {**options, "out": out, "quiet": quiet})
    if kw["epochs"] is None:
        raise TypeError("edge_sel.pretrain() needs epochs=N")
    data_options, splits = _data(data, test, kw, class_names)
    args = {**parse_model_args(kw.pop("model_args") or ()), **(model_args or {})}
    kw.pop("model_name")
    energy = build_energy(kw)
    cfg = build_config(kw, anchors_per_class=kw.pop("anchors_per_class"), fisher_samples=kw.pop("fisher_samples"),
                       explicit=_explicit(given, "pretrain"))
    with torch_threads(kw.pop("threads", None)):
        summary = run_pretrain(model, data_options, cfg, Path(out), kw["overwrite"], kw["quiet"], energy,
                               model_args=args, init_weights=kw["init_weights"], splits=splits,
                               pretrained=kw.get("pretrained"), input_norm=kw.get("input_norm"))
    return _result(summary)


# What picks a run's data, beside the dataset itself (cli_options.DATA).
DATA_OPTION_NAMES = ("data_dir", "val_fraction", "shard", "subset", "test_subset", "per_class_cap", "split_seed",
                     "image_size", "shift", "shift_seed")


def finetune(checkpoint, data="digits", *, out, test=None, class_names=None, quiet: bool = True,
             **options) -> RunResult:
    """Fine-tune `checkpoint` (a checkpoint directory, a RunResult, or a model: a model that was
    not pretrained here is first written as a checkpoint, OUT-start/, with the data's
    normalisation) on `data` into `out`; same options as `edge-sel finetune` (`epochs` required)."""
    from edge_sel.cli_config import FINETUNE_FIELDS, RENAMED_FIELDS, build_config, build_energy
    from edge_sel.engine.runs.run import finetune as run_finetune
    from edge_sel.threads import torch_threads
    from edge_sel.methods.options import method_option_names
    kw, given = resolve_options("finetune", {**options, "out": out, "quiet": quiet})
    if kw["epochs"] is None:
        raise TypeError("edge_sel.finetune() needs epochs=N")
    if isinstance(checkpoint, RunResult):
        checkpoint = checkpoint.checkpoint
    if not isinstance(checkpoint, (str, Path)):         # a model (object, name or factory spec)
        start = Path(f"{out}-start")
        # No source memory: its anchors would be drawn from the very data this fine-tune trains on.
        # The same data options, so the normalisation is that of the data this fine-tune trains on.
        same_data = {name: kw[name] for name in DATA_OPTION_NAMES}
        checkpoint = pretrain(checkpoint, data, out=start, test=test, class_names=class_names, epochs=0,
                              anchors_per_class=0, overwrite=kw["overwrite"], quiet=True, seed=kw["seed"],
                              **same_data).checkpoint
    data_options, splits = _data(data, test, kw, class_names)
    energy = build_energy(kw)
    method = {name: kw.pop(name) for name in method_option_names()}
    extra = {k: kw.pop(k) for k in FINETUNE_FIELDS}
    extra.update({field: kw.pop(option) for option, field in RENAMED_FIELDS.items()})
    artifacts = kw.pop("artifacts")
    cfg = build_config(kw, **extra, artifacts=str(artifacts) if artifacts else None, method=method,
                       explicit=_explicit(given, "finetune"))
    with torch_threads(kw.pop("threads", None)):
        summary = run_finetune(Path(checkpoint), data_options, cfg, Path(out), kw["overwrite"], kw["quiet"],
                               energy, splits=splits)
    return _result(summary)


def load_model(checkpoint):
    """The model of a checkpoint or run directory (or a RunResult), in eval mode, ready to predict
    on images normalised with `card.mean` and `card.std`; with the BatchNorm statistics it keeps
    per condition (--bn-conditions), each batch chooses its own. Returns (model, card)."""
    from edge_sel.engine.evaluation.bn_bank import attach_saved_bank
    from edge_sel.models import load_checkpoint
    directory = Path(checkpoint.checkpoint if isinstance(checkpoint, RunResult) else checkpoint)
    model, card = load_checkpoint(directory)
    attach_saved_bank(model.eval(), directory, card)
    return model, card


def resume(run_dir, quiet: bool = True) -> RunResult:
    """Continue an interrupted run (of a named dataset) with the options it was started with."""
    from edge_sel.engine.runs.run import resume as run_resume
    return _result(run_resume(Path(run_dir), quiet))
