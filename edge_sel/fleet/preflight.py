"""Checks `edge-sel fleet simulate` makes before any Flower process starts: every client option,
every client's part of the data, the held-out set, --keep-logs, and on --resume today's flags
against the saved run. A mistake found here is one line and exit 2; found in the clients, it would
be a round of failed clients."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from edge_sel.core.checkpoint import ModelCard, read_card
from edge_sel.engine.runs.data_options import check_compatible
from edge_sel.errors import InputError, parse_json
from edge_sel.fleet.local import round_plan, round_train_config
from edge_sel.fleet.node import parse_node_config
from edge_sel.fleet.partition import partition
from edge_sel.fleet.rundir import saved_config
from edge_sel.fleet.server_eval import held_out_set
from edge_sel.fleet.settings import ServerSettings

# simulate's options that are not part of the run (they may change on --resume)
NOT_THE_RUN = {"out", "resume", "overwrite", "timeout", "keep_logs"}
METHOD_FLAGS = ("gate", "target_activation", "preset")


def check_keep_logs(path: Path | None) -> None:
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"--keep-logs {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"--keep-logs {path}: already exists and is not empty (two runs' logs and client "
                         f"directories would mix); choose a new directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--keep-logs {path}: cannot create ({e.strerror or e})") from None


def start_card(settings: ServerSettings) -> ModelCard:
    """The card of the model the next round starts from: the last round's (a resumed run that
    recorded one) or the warmup's."""
    out = settings.out_dir
    if settings.resume and (out / "model.json").is_file():
        return read_card(out)
    return read_card(Path(settings.checkpoint))


def check_clients(settings: ServerSettings, node_configs: list[dict]) -> None:
    """Every simulated client can train: the method's options, the data against the model, a
    non-empty part for each client, and the server's held-out set."""
    clients = len(node_configs)
    if settings.min_clients > clients:
        raise InputError(f"--min-clients {settings.min_clients}: more than --clients {clients}; every round "
                         f"would wait for clients that never come")
    round_train_config(round_plan(settings, 1))
    card = start_card(settings)
    node = parse_node_config(node_configs[0])
    splits = node.data.load()
    check_compatible(card, splits, Path(settings.checkpoint or settings.out))
    sizes = [len(p) for p in partition(splits.train.labels, clients, node.scheme, node.alpha, node.partition_seed)]
    empty = [i for i, n in enumerate(sizes) if n == 0]
    if empty:
        how = f"--partition dirichlet --alpha {node.alpha}" if node.scheme == "dirichlet" else "--partition iid"
        raise InputError(f"--clients {clients}: with {how} client {empty[0]}'s part of the {len(splits.train)} "
                         f"training samples is empty ({len(empty)} empty client(s)); use fewer --clients"
                         + (" or a larger --alpha" if node.scheme == "dirichlet" else ""))
    try:
        held_out_set(settings, card)
    except InputError as e:         # the data loader names its own option, --dataset
        message = str(e)
        raise InputError("--eval-dataset" + message[len("--dataset"):] if message.startswith("--dataset")
                         else message) from None


def saved_flags(settings: ServerSettings) -> dict:
    """The saved run's values under simulate's option names."""
    flags = {f: getattr(settings, f) for f in ("rounds", "fleet_strategy", "proximal_mu", "min_clients",
                                                 "round_timeout", "eval_subset", "local_epochs", "batch_size",
                                                 "optimizer", "strategy", "sparsity", "backend", "keep", "seed",
                                                 "memory_format", "eval_batch_size", "val_subset")}
    method = settings.method_options
    flags.update({"lr": None if settings.lr < 0 else settings.lr, "checkpoint": settings.checkpoint,
                  "eval_dataset": settings.eval_dataset, **{k: method.get(k) for k in METHOD_FLAGS}})
    return {**flags, **parse_json(settings.simulation)}


def comparable(name: str, value):
    if name == "checkpoint" and value is not None:
        return str(Path(value).expanduser().resolve())
    return str(value) if isinstance(value, Path) else value


def resumed_settings(ctx: click.Context, out: Path) -> ServerSettings:
    """The saved run's settings; an option given today that differs from them is one line naming it
    (the server continues with the saved settings, and the clients' data must be dealt as before)."""
    saved = saved_config(out)
    settings = ServerSettings.from_run_config({**saved, "resume": True, "out": str(Path(out).resolve())})
    before = saved_flags(settings)
    given = [n for n in ctx.params if n not in NOT_THE_RUN
             and ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE]
    method = settings.method_options
    for name in given:
        today = ctx.params[name]
        if name == "method_options":
            for item in today:
                key, _, value = item.partition("=")
                key = key.strip().replace("-", "_")
                if _json_or_text(value) != method.get(key):
                    raise InputError(f"--method-option {item}: the run in {out} was started with "
                                     f"{key}={json.dumps(method.get(key))}; resume with the same value or leave it out")
            continue
        if name in before and comparable(name, today) != comparable(name, before[name]):
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} {today}: the run in {out} was started with {flag} {before[name]}; "
                             f"resume with the same value or leave it out")
    return settings


def _json_or_text(value: str):
    try:
        return parse_json(value)
    except json.JSONDecodeError:
        return value
