"""The Flower ServerApp: a chosen Flower strategy runs the rounds from a warmup checkpoint; after
each round the global model is evaluated on a held-out set and the round is recorded."""

from __future__ import annotations

import json
import re
import time
from logging import INFO

from edge_sel.fleet import require_flwr

require_flwr("edge_sel.fleet.server_app")

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord  # noqa: E402
from flwr.common.logger import log  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg, FedProx  # noqa: E402

from edge_sel.fleet.aggregate import flower_sum_aggregation  # noqa: E402
from edge_sel.fleet.local import round_plan  # noqa: E402
from edge_sel.fleet.rundir import FleetRun, read_model, round_line, saved_config  # noqa: E402
from edge_sel.fleet.server_eval import global_accuracy, held_out_set  # noqa: E402
from edge_sel.fleet.settings import ServerSettings  # noqa: E402

STRATEGIES = {"fedavg": FedAvg, "fedprox": FedProx}


def recording_strategy(settings: ServerSettings, offset: int):
    """The chosen Flower strategy, which also keeps each round's client reports for the record and
    numbers rounds from where a resumed run left off."""
    base = STRATEGIES[settings.fleet_strategy]

    class Recording(base):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.reports: dict[int, list[dict]] = {}

        def configure_train(self, server_round, arrays, config, grid):
            config["fleet-round"] = server_round + offset
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            reports = [client_report(m) for m in replies if not m.has_error()]
            if len(reports) < settings.min_clients:
                raise RoundFailed(too_few_clients(server_round + offset, reports, replies, settings.min_clients))
            self.reports[server_round + offset] = reports
            return super().aggregate_train(server_round, replies)

    kwargs = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=settings.min_clients,
                  min_available_nodes=settings.min_clients, train_metrics_aggr_fn=flower_sum_aggregation)
    if settings.fleet_strategy == "fedprox":
        kwargs["proximal_mu"] = settings.proximal_mu
    return Recording(**kwargs)


class RoundFailed(Exception):
    """Fewer clients than --min-clients trained in a round: the run ends (the global model would
    be an average of too few devices, or of none)."""


def too_few_clients(fleet_round: int, reports: list, replies: list, min_clients: int) -> str:
    errors = [client_error(m) for m in replies if m.has_error()]
    said = f"; a client failed with: {errors[0]}" if errors else "; no other client replied in time"
    return (f"round {fleet_round}: {len(reports)} client(s) trained, fewer than --min-clients {min_clients}"
            f"{said}")


def client_error(message) -> str:
    """The client's exception message out of Flower's "<class '...'>:<'message'>" error reason."""
    reason = str(message.error.reason)
    found = re.search(r":<'(.*)'>$", reason, re.S)
    text = found.group(1) if found else reason
    return " ".join(text.split())[:300]


def client_report(message) -> dict:
    content = message.content
    metrics = dict(next(iter(content.metric_records.values())))
    info = dict(content.config_records["info"]) if "info" in content.config_records else {}
    client = info.pop("client", str(message.metadata.src_node_id))
    return {"client": client, "metrics": metrics, "info": info}


def serve(grid: Grid, settings: ServerSettings) -> dict:
    if settings.resume:      # the run continues with the settings it was started with
        saved = saved_config(settings.out_dir)
        settings = ServerSettings.from_run_config({**saved, "resume": True, "out": settings.out})
    # the warmup is read before a new run clears --out
    warm = None if settings.resume else read_model(settings.checkpoint)
    run = FleetRun(settings.out_dir, settings.to_run_config(), resume=settings.resume,
                   overwrite=settings.overwrite)
    model, card = warm or run.start_model(settings.checkpoint)
    memory_from = run.start_dir(settings.checkpoint)      # what every round's checkpoint carries
    test = held_out_set(settings, card)
    offset = run.last_round or 0
    remaining = settings.rounds - offset
    if remaining <= 0:
        return run.write_summary()
    strategy = recording_strategy(settings, offset)
    plan = round_plan(settings, offset + 1)
    train_config = ConfigRecord({**plan.to_config(), "model-card": json.dumps(card.to_json())})
    extra = {"fleet_strategy": settings.fleet_strategy, "strategy": settings.strategy,
             "target_activation": settings.method_options.get("target_activation")}
    started = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        fleet_round = server_round + offset
        if server_round == 0 and offset > 0:
            return None             # resumed: that model's round is already recorded
        model.load_state_dict(arrays.to_torch_state_dict())
        acc = global_accuracy(model, card, test)
        clients = strategy.reports.pop(fleet_round, [])
        now = time.perf_counter()
        record = run.write_round(fleet_round, model, card, {"test_acc": acc, "test_samples": len(test)}, clients,
                                 {**extra, "round_wall_s": now - started[0] if server_round else 0.0},
                                 memory_from=memory_from)
        log(INFO, "edge-sel %s", round_line(record))
        started[0] = now
        return MetricRecord({"test_acc": acc if acc is not None else float("nan")})

    try:
        strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=remaining,
                       timeout=settings.round_timeout, train_config=train_config, evaluate_fn=evaluate)
    except RoundFailed as e:
        run.write_summary(stop_reason=str(e))
        raise                   # the Flower run ends as failed, with this message
    return run.write_summary()


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, ServerSettings.from_run_config(dict(context.run_config)))
