"""`edge-sel fleet`: simulate a fleet on this machine, submit a fleet run to a SuperLink, or write
the Flower app for `flwr run`."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import click

from edge_sel.cli_base import Group
from edge_sel.errors import InputError, parse_json, read_json, required_file

STRATEGY_OPTIONS = [
    click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                 help="Warmup checkpoint directory the fleet starts from."),
    click.option("--out", type=click.Path(path_type=Path), required=True, help="The fleet's run directory."),
    click.option("--overwrite", is_flag=True, help="Replace an existing --out."),
    click.option("--resume", is_flag=True, help="Continue the run in --out from its last completed round."),
    click.option("--rounds", type=int, default=3, show_default=True, help="Federated rounds to run."),
    click.option("--fleet-strategy", type=click.Choice(["fedavg", "fedprox"]), default="fedavg", show_default=True,
                 help="Flower's aggregation strategy."),
    click.option("--proximal-mu", type=float, default=0.0, show_default=True, help="FedProx's proximal weight."),
    click.option("--eval-dataset", default=None,
                 help="Held-out set for the global model (its test split) [default: the clients' dataset]."),
    click.option("--eval-subset", type=int, default=0, help="Evaluate on the first N held-out samples (0: all)."),
    click.option("--local-epochs", type=int, default=1, show_default=True, help="Epochs each client trains per round."),
    click.option("--batch-size", type=int, default=64, show_default=True, help="Clients' training batch size."),
    click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="sgd", show_default=True,
                 help="Clients' optimizer (as finetune --optimizer)."),
    click.option("--lr", type=float, default=None, help="Local learning rate [default: edge-sel's for the optimizer]."),
    click.option("--strategy", default="dense", show_default=True,
                 help="The clients' edge-sel method (as finetune --strategy)."),
    click.option("--gate", default=None, help="A gate over the method's plan (e.g. sundew)."),
    click.option("--target-activation", type=float, default=None, help="Share of local samples computed."),
    click.option("--preset", default=None, help="A named edge-sel recipe for the clients."),
    click.option("--sparsity", default="none", show_default=True, help="The clients' updater (as finetune --sparsity)."),
    click.option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True,
                 help="What runs the clients' training step (as finetune --backend)."),
    click.option("--method-option", "method_options", multiple=True, metavar="KEY=JSON",
                 help="Any other method option, e.g. --method-option 'temperature=2.0' (repeatable)."),
    click.option("--keep", type=click.Choice(["last", "best"]), default="last", show_default=True,
                 help="What each client hands back: its last epoch, or its best by local validation."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of the clients' data order and augmentation."),
    click.option("--memory-format", type=click.Choice(["auto", "channels_last", "contiguous"]), default="auto",
                 show_default=True, help="The clients' layout (auto: measured once per device)."),
    click.option("--eval-batch-size", type=int, default=0, show_default=True,
                 help="The clients' evaluation batch (0: measured once per device)."),
    click.option("--val-subset", type=int, default=0, show_default=True,
                 help="Clients validate on this many local samples (0: all)."),
    click.option("--min-clients", type=int, default=None, help="Clients a round waits for [default: all]."),
    click.option("--round-timeout", type=float, default=3600.0, show_default=True,
                 help="Seconds a round waits for client replies."),
    click.option("--timeout", type=float, default=3600.0, show_default=True,
                 help="Hard limit in seconds on the whole run; every process is stopped after it."),
]


def with_options(options):
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


def method_dict(kw: dict) -> dict:
    method = {k: kw.pop(k) for k in ("gate", "target_activation", "preset")}
    for item in kw.pop("method_options"):
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--method-option {item!r}: expected KEY=VALUE")
        key = key.strip().replace("-", "_")
        try:
            value = parse_json(value)
        except json.JSONDecodeError:
            pass
        method[key] = method_option_value(item, key, value)
    return {k: v for k, v in method.items() if v is not None}


def method_option_value(item: str, key: str, value):
    """A --method-option checked as finetune checks the option of that name (its type and choices)."""
    from edge_sel.methods.options import METHOD_OPTIONS
    specs = {spec.name: spec for spec in METHOD_OPTIONS}
    if key not in specs:
        raise InputError(f"--method-option {item}: unknown option {key!r}; known: {', '.join(sorted(specs))}")
    param = click.Option(specs[key].decls, **specs[key].attrs)
    try:
        return param.type.convert(value, param, None)
    except click.BadParameter as e:
        raise InputError(f"--method-option {item}: {e.message}") from None


def settings_from(kw: dict, eval_dataset: str | None, clients: int | None, simulation: dict | None = None,
                  on_this_machine: bool = True):
    """The run's settings from the options. `on_this_machine`: --checkpoint and --out are local
    paths (fleet simulate), checked here; for fleet run they are the SuperLink's, checked there."""
    from edge_sel.fleet.settings import ServerSettings
    method = method_dict(kw)
    checkpoint = kw.pop("checkpoint")
    if checkpoint is None and not kw["resume"]:
        raise InputError("missing option '--checkpoint' (the warmup the fleet starts from)")
    local = (lambda p: str(Path(p).resolve())) if on_this_machine else str
    if on_this_machine:
        if checkpoint is not None:
            from edge_sel.core.checkpoint import read_card
            read_card(checkpoint)
        if not kw["resume"]:
            from edge_sel.core.outputs import check_out_dir
            check_out_dir(kw["out"], kw["overwrite"], "fleet", [("--checkpoint", checkpoint)])
        else:
            required_file(kw["out"], "config.json", "--resume", "fleet run directory")
    min_clients = kw.pop("min_clients") or clients or 2
    return ServerSettings(
        out=local(kw.pop("out")), checkpoint=local(checkpoint) if checkpoint else "",
        resume=kw.pop("resume"), overwrite=kw.pop("overwrite"), rounds=kw.pop("rounds"),
        fleet_strategy=kw.pop("fleet_strategy"), proximal_mu=kw.pop("proximal_mu"), min_clients=min_clients,
        round_timeout=kw.pop("round_timeout"), eval_dataset=eval_dataset or "", eval_subset=kw.pop("eval_subset"),
        local_epochs=kw.pop("local_epochs"), batch_size=kw.pop("batch_size"), optimizer=kw.pop("optimizer"),
        lr=-1.0 if kw["lr"] is None else kw["lr"], strategy=kw.pop("strategy"), sparsity=kw.pop("sparsity"),
        backend=kw.pop("backend"), method=json.dumps(method), keep=kw.pop("keep"), seed=kw.pop("seed"),
        memory_format=kw.pop("memory_format"), eval_batch_size=kw.pop("eval_batch_size"),
        val_subset=kw.pop("val_subset"), simulation=json.dumps(simulation or {}),
    ).validate()


def print_rounds(out: Path) -> dict:
    summary_file = out / "summary.json"
    if not summary_file.is_file():
        raise click.ClickException(f"the fleet run wrote no {summary_file}")
    from edge_sel.core.records import read_records
    from edge_sel.fleet.rundir import round_line
    for r in read_records(out / "metrics.jsonl"):
        click.echo(round_line(r))
    return read_json(summary_file)


@click.group("fleet", cls=Group)
def fleet_group():
    """Fine-tune one model across a fleet of devices with Flower (pip install edge-sel[fleet])."""


@fleet_group.command("simulate")
@click.option("--dataset", required=True, help="The one dataset the simulated clients split (digits, folder:PATH, ...).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the CIFAR-10 archive lives (--dataset cifar10).")
@click.option("--clients", type=int, default=2, show_default=True, help="Number of SuperNodes.")
@click.option("--partition", type=click.Choice(["iid", "dirichlet"]), default="iid", show_default=True,
              help="How the training split is dealt to clients.")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Dirichlet concentration (non-iid).")
@click.option("--partition-seed", type=int, default=0, show_default=True,
              help="Seed of the deal of samples to clients.")
@click.option("--shard", default=None, help="K/N: the clients split only this shard of the training split.")
@click.option("--subset", type=int, default=None, help="...and only this many samples of it (class-balanced).")
@click.option("--meters", default=None, help="Clients' energy meters (comma-separated) [default: automatic].")
@click.option("--memory-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="MiB: every client's own --memory-budget (its node config's memory-budget) [default: none].")
@click.option("--keep-logs", type=click.Path(path_type=Path), default=None,
              help="Keep the Flower logs and client run directories here [default: a temporary folder].")
@with_options(STRATEGY_OPTIONS)
@click.pass_context
def simulate_cmd(ctx, dataset, data_dir, clients, partition, alpha, partition_seed, shard, subset, meters,
                 memory_budget, keep_logs, **kw):
    """A fleet on this machine: a SuperLink and --clients SuperNodes on 127.0.0.1, each client with
    its part of one dataset."""
    from edge_sel.fleet import require_flwr
    require_flwr("edge-sel fleet simulate")
    from edge_sel.fleet.launch import LoopbackFleet, Stopped, stop_on_signals
    from edge_sel.fleet.preflight import check_clients, check_keep_logs, resumed_settings
    if clients < 1:
        raise InputError(f"--clients must be >= 1, got {clients}")
    timeout = kw.pop("timeout")
    simulation = {"dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "clients": clients,
                  "partition": partition, "alpha": alpha, "partition_seed": partition_seed, "shard": shard,
                  "subset": subset, "meters": meters, "memory_budget": memory_budget}
    if kw["resume"]:
        settings = resumed_settings(ctx, kw["out"])
        simulation.update(parse_json(settings.simulation))      # the clients' data dealt as before
    else:
        settings = settings_from(kw, kw.pop("eval_dataset") or dataset, clients, simulation)
    check_clients(settings, node_configs(simulation, None))
    check_keep_logs(keep_logs)
    work = Path(keep_logs) if keep_logs else Path(tempfile.mkdtemp(prefix="edge-sel-fleet-"))
    stopped = None
    try:
        with stop_on_signals(), LoopbackFleet(work, node_configs(simulation, work)) as fleet:
            code = fleet.run(settings, timeout=timeout)
    except TimeoutError as e:           # every process is stopped by now; the records say how far it got
        code = str(e)
    except Stopped as e:                # likewise
        stopped, code = e, str(e)
    finally:
        if not keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    finish(settings, code, work if keep_logs else None, exit_code=stopped.exit_code if stopped else 1)


def node_configs(simulation: dict, work: Path | None) -> list[dict]:
    """Each simulated SuperNode's --node-config: its part of the one dataset, its own work-dir."""
    clients = simulation["clients"]
    configs = []
    for i in range(clients):
        config = {"dataset": simulation["dataset"], "partition-id": i, "num-partitions": clients,
                  "partition": simulation["partition"], "alpha": float(simulation["alpha"]),
                  "partition-seed": simulation["partition_seed"], "split-seed": 0}
        if work is not None:
            config["work-dir"] = str((work / f"client-{i}").resolve())
        config.update({key.replace("_", "-"): simulation[key]
                       for key in ("data_dir", "shard", "subset", "meters", "memory_budget")
                       if simulation.get(key) is not None})
        configs.append(config)
    return configs


@fleet_group.command("run")
@click.option("--superlink", required=True, metavar="HOST:PORT", help="The SuperLink's address.")
@click.option("--root-certificates", type=click.Path(path_type=Path, exists=True), default=None,
              help="CA certificate of the SuperLink's TLS certificate (omit only for --insecure SuperLinks).")
@click.option("--insecure", is_flag=True, help="Talk to a SuperLink started with --insecure (no TLS).")
@with_options(STRATEGY_OPTIONS)
def run_cmd(superlink, root_certificates, insecure, **kw):
    """Submit a fleet run to a running SuperLink (the SuperNodes bring their own data). --checkpoint,
    --out and --eval-dataset are paths on the SuperLink's machine, where the ServerApp runs and
    writes the records and summary.json; this command shows the run's log and how it ended."""
    from edge_sel.fleet import require_flwr
    require_flwr("edge-sel fleet run")
    import subprocess
    from edge_sel.fleet import remote
    from edge_sel.fleet.launch import Stopped, flower_env, stop_on_signals, write_app, write_connection, write_run_config
    if not insecure and root_certificates is None:
        raise InputError("--root-certificates: needed for a TLS SuperLink (or pass --insecure)")
    timeout = kw.pop("timeout")
    eval_dataset = kw.pop("eval_dataset")
    if not eval_dataset and not kw["resume"]:
        raise InputError("missing option '--eval-dataset' (the held-out set the server evaluates on)")
    for option, value in (("--checkpoint", kw["checkpoint"]), ("--out", kw["out"]),
                          ("--eval-dataset", eval_dataset[len("folder:"):] if (eval_dataset or "").startswith("folder:")
                           else None)):
        if value is not None and not Path(value).is_absolute():
            raise InputError(f"{option} {value}: a path on the SuperLink's machine, so it must be absolute")
    settings = settings_from(kw, eval_dataset, None, on_this_machine=False)
    if not settings.resume:       # the clients' options are the same everywhere: checked here, before submitting
        from edge_sel.fleet.local import round_plan, round_train_config
        round_train_config(round_plan(settings, 1))
    with tempfile.TemporaryDirectory(prefix="edge-sel-fleet-") as work:
        home = Path(work) / "flwr-home"
        write_connection(home, superlink, str(Path(root_certificates).resolve()) if root_certificates else None)
        env = flower_env(home)
        app = write_app(Path(work) / "app")
        run_id = submit_or_stop(remote, app, write_run_config(Path(work) / "run-config.toml", settings), env,
                                superlink)
        click.echo(f"fleet run {run_id} started on {superlink}; its records and summary.json go to "
                   f"{settings.out} on the SuperLink's machine")
        stopped = None
        try:
            with stop_on_signals():
                remote.follow(run_id, env, timeout)
        except subprocess.TimeoutExpired:
            stopped = (f"it did not finish within {timeout:.0f} s", 1)
        except Stopped as e:
            stopped = (str(e), e.exit_code)
        except KeyboardInterrupt:
            stopped = ("interrupted", 130)
        if stopped:
            answer = remote.stop(run_id, env)
            click.echo(f"edge-sel: error: fleet run {run_id} stopped: {stopped[0]} (the SuperLink: {answer}); "
                       f"continue with --resume --out {settings.out}", err=True)
            sys.exit(stopped[1])
        state, details = remote.status(run_id, env)
    if state != "finished:completed":
        click.echo(f"edge-sel: error: fleet run {run_id} {state}: {' '.join(details.split()) or 'no details'}; "
                   f"continue with --resume --out {settings.out}", err=True)
        sys.exit(1)
    click.echo(f"fleet run {run_id} completed; records and summary.json in {settings.out} on the SuperLink's machine")


def submit_or_stop(remote, app: Path, run_config: Path, env: dict, superlink: str) -> int:
    """remote.submit; a SIGTERM, SIGHUP or Ctrl-C meanwhile ends the command with one line and the
    signal's exit status (the `flwr run` child is killed with it, so whether the SuperLink took the
    run is not known here: `flwr ls` says)."""
    from edge_sel.engine.runs.signals import exit_code_for
    from edge_sel.fleet.launch import Stopped, stop_on_signals
    try:
        with stop_on_signals():
            return remote.submit(app, run_config, env)
    except (Stopped, KeyboardInterrupt) as e:
        why, code = (str(e), e.exit_code) if isinstance(e, Stopped) else ("interrupted", exit_code_for(None))
    click.echo(f"edge-sel: error: {why} while submitting the fleet run to {superlink}; if the SuperLink "
               f"took it, `flwr ls` lists it and `flwr stop` stops it", err=True)
    sys.exit(code)


def finish(settings, code, logs: Path | None, exit_code: int = 1) -> None:
    """The rounds recorded; a run that stopped early ends with one line saying why, exit 1 (or the
    signal's 128 + N)."""
    out = settings.out_dir
    summary = print_rounds(out) if (out / "summary.json").is_file() else {}
    rounds = summary.get("config", {}).get("rounds", settings.rounds)     # a resumed run keeps its own
    if summary.get("last_round") != rounds:
        reason = summary.get("stop_reason") or (code if isinstance(code, str) else f"flwr run exit {code}")
        where = f"; logs in {logs}" if logs else "; rerun with --keep-logs DIR to keep the Flower logs"
        click.echo(f"edge-sel: error: the fleet run stopped after round {summary.get('last_round')} of {rounds} "
                   f"({reason}){where}; continue with --resume --out {out}", err=True)
        sys.exit(exit_code)
    click.echo(f"fleet run directory: {out}")


@fleet_group.command("app")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to write the Flower app to.")
@click.option("--overwrite", is_flag=True, help="Replace an app this command wrote before in --out.")
def app_cmd(out, overwrite):
    """Write the Flower app (a pyproject naming edge-sel's ServerApp and ClientApp) for `flwr run`."""
    from edge_sel.core.outputs import check_out_dir, staged_out_dir
    from edge_sel.fleet.launch import write_app
    check_out_dir(out, overwrite, "fleet app")      # never over a project's own pyproject.toml
    with staged_out_dir(out, "fleet app") as staging:
        write_app(staging)
    click.echo(f"Flower app written to {out}: flwr run {out} <connection> --run-config \"out='...' "
               f"checkpoint='...' eval-dataset='...' rounds=5\"")
