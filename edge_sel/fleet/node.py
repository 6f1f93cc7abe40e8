"""A SuperNode's own settings (its `--node-config`): where its local data is, which slice of it
is this client's, its device profile and meters. Validated with errors naming the key at fault."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.errors import InputError
from edge_sel.fleet.partition import SCHEMES

# key -> type; keys are written with '-' or '_' alike ("partition-id" or "partition_id").
KEYS = {
    "dataset": str, "data-dir": str, "shard": str, "subset": int, "val-fraction": float, "split-seed": int,
    "image-size": int, "partition-id": int, "num-partitions": int, "partition": str, "alpha": float,
    "partition-seed": int, "profile": str, "device": str, "meters": str, "watts-per-core": float,
    "work-dir": str, "memory-budget": float,
}


@dataclass
class NodeSettings:
    data: DataOptions
    partition_id: int | None = None         # this client's part of the (sharded) training split
    num_partitions: int | None = None
    scheme: str = "iid"
    alpha: float = 0.5
    partition_seed: int = 0
    profile: str | None = None
    device: str | None = None
    meters: list[str] = field(default_factory=list)
    watts_per_core: float | None = None
    work_dir: Path | None = None            # where each round's local run directory is written
    memory_budget_mb: float | None = None   # this device's --memory-budget (else its profile's)

    def describe(self) -> dict:
        return {"data": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.data).items()},
                "partition_id": self.partition_id, "num_partitions": self.num_partitions,
                "scheme": self.scheme, "alpha": self.alpha, "partition_seed": self.partition_seed,
                "profile": self.profile}

    def round_dir(self, fleet_round: int, run_id: str = "", node_id: str = "") -> Path:
        """This node's local run directory for a round: under work_dir (by default a private
        per-user directory), named by the server's run id and this node's id. The run id comes
        from the server, so it is reduced to a plain name: it can never point outside work_dir,
        where the round's run directory is cleared before training."""
        base = self.work_dir or private_work_dir()
        run = safe_name(run_id) or "run"
        node = safe_name(node_id)
        path = base / f"run-{run}" / (f"node-{node}" if node else "node") / f"round-{fleet_round:03d}"
        if base.resolve() not in path.resolve().parents:      # a symlinked run directory, say
            raise InputError(f"node config work-dir {base}: round directory {path} resolves outside it")
        return path


def safe_name(text: str) -> str:
    """Letters, digits, '.', '_' and '-' only, never '.' or '..' alone."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip(".")
    return name[:100]


def private_work_dir() -> Path:
    """$XDG_CACHE_HOME/edge-sel/fleet (~/.cache/...), mode 0700: another user on the device can
    neither read a round's records nor plant a directory there."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-sel" / "fleet"
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(base, 0o700)
    except OSError as e:
        raise InputError(f"node config work-dir: cannot create the default {base} ({e.strerror or e}); "
                         f"give work-dir") from None
    return base


def _typed(key: str, value, kind):
    where = f"node config {key}"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def parse_node_config(config: dict) -> NodeSettings:
    """NodeSettings from a node's config mapping (Flower hands it over as key -> str/int/float/bool)."""
    given = {}
    for key, value in dict(config).items():
        name = str(key).replace("_", "-")
        if name not in KEYS:
            raise InputError(f"node config {key}: unknown key; known keys: {', '.join(KEYS)}")
        given[name] = _typed(name, value, KEYS[name])
    if "dataset" not in given:
        raise InputError("node config: missing dataset (e.g. --node-config \"dataset='folder:/data/local'\")")
    data = DataOptions(dataset=given["dataset"],
                       data_dir=Path(given["data-dir"]) if "data-dir" in given else None,
                       val_fraction=given.get("val-fraction", 0.1), shard=given.get("shard"),
                       subset=given.get("subset"), split_seed=given.get("split-seed", 0),
                       image_size=given.get("image-size"))
    node = NodeSettings(data, given.get("partition-id"), given.get("num-partitions"),
                        given.get("partition", "iid"), given.get("alpha", 0.5), given.get("partition-seed", 0),
                        given.get("profile"), given.get("device"),
                        [m for m in given.get("meters", "").split(",") if m], given.get("watts-per-core"),
                        Path(given["work-dir"]) if "work-dir" in given else None, given.get("memory-budget"))
    if node.memory_budget_mb is not None and not node.memory_budget_mb > 0:
        raise InputError(f"node config memory-budget: must be > 0 MiB, got {node.memory_budget_mb}")
    if (node.partition_id is None) != (node.num_partitions is None):
        raise InputError("node config: partition-id and num-partitions go together")
    if node.num_partitions is not None and not 0 <= node.partition_id < node.num_partitions:
        raise InputError(f"node config partition-id: need 0 <= partition-id < num-partitions "
                         f"({node.num_partitions}), got {node.partition_id}")
    if node.scheme not in SCHEMES:
        raise InputError(f"node config partition: must be one of {', '.join(SCHEMES)}, got {node.scheme!r}")
    if not node.alpha > 0:
        raise InputError(f"node config alpha: must be > 0, got {node.alpha}")
    return node
