"""The Flower ClientApp: each round, edge-sel's own fine-tune of the global weights on the node's
local data (its --node-config), reporting samples, FLOPs, joules and local accuracy."""

from __future__ import annotations

from pathlib import Path

from edge_sel.fleet import require_flwr

require_flwr("edge_sel.fleet.client_app")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from edge_sel.core.checkpoint import ModelCard  # noqa: E402
from edge_sel.errors import parse_json  # noqa: E402
from edge_sel.fleet.local import RoundPlan, train_round  # noqa: E402
from edge_sel.fleet.node import parse_node_config  # noqa: E402

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    node = parse_node_config(dict(context.node_config))
    config = dict(msg.content["config"])
    plan = RoundPlan.from_config(config)
    card = ModelCard.from_json(parse_json(config["model-card"]), Path("model card of the fleet run"))
    weights = msg.content["arrays"].to_torch_state_dict()
    # the node id keeps two SuperNodes on one host (one work-dir) out of each other's round directory
    new_weights, metrics, info = train_round(weights, card, node, plan, node_id=str(context.node_id))
    client = str(node.partition_id) if node.partition_id is not None else str(context.node_id)
    content = RecordDict({"arrays": ArrayRecord(new_weights), "metrics": MetricRecord(metrics),
                          "info": ConfigRecord({**info, "client": client})})
    return Message(content, reply_to=msg)
