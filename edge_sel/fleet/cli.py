"""`edge-sel fleet`: simulate a fleet on this machine, submit a fleet run to a SuperLink, or write
the Flower app for `flwr run`."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click

from edge_sel.cli_base import Group
from edge_sel.errors import InputError, required_file

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
        try:
            method[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            method[key.strip().replace("-", "_")] = value
    return {k: v for k, v in method.items() if v is not None}


def settings_from(kw: dict, eval_dataset: str | None, clients: int | None):
    from edge_sel.fleet.settings import ServerSettings
    method = method_dict(kw)
    checkpoint = kw.pop("checkpoint")
    if checkpoint is None and not kw["resume"]:
        raise InputError("missing option '--checkpoint' (the warmup the fleet starts from)")
    if checkpoint is not None:
        from edge_sel.core.checkpoint import read_card
        read_card(checkpoint)
    if not kw["resume"]:
        from edge_sel.engine.run import check_out_dir
        check_out_dir(kw["out"], kw["overwrite"])
    else:
        required_file(kw["out"], "config.json", "--resume", "fleet run directory")
    min_clients = kw.pop("min_clients") or clients or 2
    return ServerSettings(
        out=str(Path(kw.pop("out")).resolve()), checkpoint=str(Path(checkpoint).resolve()) if checkpoint else "",
        resume=kw.pop("resume"), overwrite=kw.pop("overwrite"), rounds=kw.pop("rounds"),
        fleet_strategy=kw.pop("fleet_strategy"), proximal_mu=kw.pop("proximal_mu"), min_clients=min_clients,
        round_timeout=kw.pop("round_timeout"), eval_dataset=eval_dataset or "", eval_subset=kw.pop("eval_subset"),
        local_epochs=kw.pop("local_epochs"), batch_size=kw.pop("batch_size"), optimizer=kw.pop("optimizer"),
        lr=-1.0 if kw["lr"] is None else kw["lr"], strategy=kw.pop("strategy"), sparsity=kw.pop("sparsity"),
        backend=kw.pop("backend"), method=json.dumps(method), keep=kw.pop("keep"), seed=kw.pop("seed"),
        memory_format=kw.pop("memory_format"), eval_batch_size=kw.pop("eval_batch_size"),
        val_subset=kw.pop("val_subset"),
    ).validate()


def print_rounds(out: Path) -> dict:
    summary_file = out / "summary.json"
    if not summary_file.is_file():
        raise click.ClickException(f"the fleet run wrote no {summary_file}")
    from edge_sel.core.records import read_records
    for r in read_records(out / "metrics.jsonl"):
        joules = "-" if r.get("energy_j") is None else f"{r['energy_j']:.1f} J"
        acc = "-" if r.get("test_acc") is None else f"{r['test_acc']:.4f}"
        click.echo(f"round {r['round']:3d}  global test acc {acc}  fleet energy {joules} "
                   f"({r.get('energy_method') or '-'})  samples trained {r.get('backward_samples') or 0}  "
                   f"clients {r.get('clients_reporting', 0)}")
    return json.loads(summary_file.read_text())


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
@click.option("--keep-logs", type=click.Path(path_type=Path), default=None,
              help="Keep the Flower logs and client run directories here [default: a temporary folder].")
@with_options(STRATEGY_OPTIONS)
def simulate_cmd(dataset, data_dir, clients, partition, alpha, partition_seed, shard, subset, meters, keep_logs, **kw):
    """A fleet on this machine: a SuperLink and --clients SuperNodes on 127.0.0.1, each client with
    its part of one dataset."""
    from edge_sel.fleet import require_flwr
    require_flwr("edge-sel fleet simulate")
    from edge_sel.fleet.launch import LoopbackFleet
    from edge_sel.fleet.local import local_splits
    from edge_sel.fleet.node import parse_node_config
    if clients < 1:
        raise InputError(f"--clients must be >= 1, got {clients}")
    timeout = kw.pop("timeout")
    settings = settings_from(kw, kw.pop("eval_dataset") or dataset, clients)
    work = Path(keep_logs) if keep_logs else Path(tempfile.mkdtemp(prefix="edge-sel-fleet-"))
    configs = []
    for i in range(clients):
        config = {"dataset": dataset, "partition-id": i, "num-partitions": clients, "partition": partition,
                  "alpha": alpha, "partition-seed": partition_seed, "split-seed": 0,
                  "work-dir": str((work / f"client-{i}").resolve())}
        config.update({k: v for k, v in (("data-dir", str(data_dir) if data_dir else None), ("shard", shard),
                                         ("subset", subset), ("meters", meters)) if v is not None})
        configs.append(config)
    local_splits(parse_node_config(configs[0]))     # bad data or an empty part fails here, before any process
    try:
        with LoopbackFleet(work, configs) as fleet:
            code = fleet.run(settings, timeout=timeout)
    except TimeoutError as e:           # every process is stopped by now; the records say how far it got
        code = str(e)
    finally:
        if not keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    finish(settings, code, work if keep_logs else None)


@fleet_group.command("run")
@click.option("--superlink", required=True, metavar="HOST:PORT", help="The SuperLink's address.")
@click.option("--root-certificates", type=click.Path(path_type=Path, exists=True), default=None,
              help="CA certificate of the SuperLink's TLS certificate (omit only for --insecure SuperLinks).")
@click.option("--insecure", is_flag=True, help="Talk to a SuperLink started with --insecure (no TLS).")
@with_options(STRATEGY_OPTIONS)
def run_cmd(superlink, root_certificates, insecure, **kw):
    """Submit a fleet run to a running SuperLink (the SuperNodes bring their own data)."""
    from edge_sel.fleet import require_flwr
    require_flwr("edge-sel fleet run")
    import subprocess
    from edge_sel.fleet.launch import flower_command, flower_env, write_app, write_connection, write_run_config
    if not insecure and root_certificates is None:
        raise InputError("--root-certificates: needed for a TLS SuperLink (or pass --insecure)")
    timeout = kw.pop("timeout")
    eval_dataset = kw.pop("eval_dataset")
    if not eval_dataset and not kw["resume"]:
        raise InputError("missing option '--eval-dataset' (the held-out set the server evaluates on)")
    settings = settings_from(kw, eval_dataset, None)
    with tempfile.TemporaryDirectory(prefix="edge-sel-fleet-") as work:
        home = Path(work) / "flwr-home"
        write_connection(home, superlink, str(Path(root_certificates).resolve()) if root_certificates else None)
        app = write_app(Path(work) / "app")
        overrides = write_run_config(Path(work) / "run-config.toml", settings)
        try:
            code = subprocess.run([flower_command("flwr"), "run", str(app), "edge", "--stream",
                                   "--run-config", str(overrides)], env=flower_env(home), timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise click.ClickException(f"the fleet run did not finish within {timeout:.0f} s") from None
    finish(settings, code, None)


def finish(settings, code, logs: Path | None) -> None:
    out = settings.out_dir
    summary = print_rounds(out) if (out / "summary.json").is_file() else {}
    rounds = summary.get("config", {}).get("rounds", settings.rounds)     # a resumed run keeps its own
    if summary.get("last_round") != rounds:
        where = f"; logs in {logs}" if logs else "; rerun with --keep-logs DIR to keep the Flower logs"
        raise click.ClickException(f"the fleet run stopped after round {summary.get('last_round')} of "
                                   f"{rounds} ({code if isinstance(code, str) else f'flwr run exit {code}'}){where}; "
                                   f"continue with --resume --out {out}")
    click.echo(f"fleet run directory: {out}")


@fleet_group.command("app")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to write the Flower app to.")
def app_cmd(out):
    """Write the Flower app (a pyproject naming edge-sel's ServerApp and ClientApp) for `flwr run`."""
    from edge_sel.fleet.launch import write_app
    write_app(Path(out))
    click.echo(f"Flower app written to {out}: flwr run {out} <connection> --run-config \"out='...' "
               f"checkpoint='...' eval-dataset='...' rounds=5\"")
