"""The server's run directory: one record per round (metrics.jsonl, metrics.csv), the global model
after each round as a checkpoint, summary.json; all written atomically, so a crashed server
resumes from its last completed round."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from edge_sel.version import __version__
from edge_sel.core.checkpoint import ModelCard, atomic_write_bytes, read_card, read_weights, save_checkpoint
from edge_sel.core.records import RecordWriter, read_records
from edge_sel.core.source_memory import copy_source_memory, has_source_memory
from edge_sel.core.outputs import check_out_dir, start_out_dir
from edge_sel.errors import InputError, read_json, required_file, writing
from edge_sel.fleet.aggregate import combine
from edge_sel.models import model_for_card

ENERGY_NOTE = ("fleet joules are the sum of the clients' own meters (energy_source/energy_method say which); "
               "the server's evaluation is not counted")


def round_dir(out: Path, fleet_round: int) -> Path:
    return Path(out) / "rounds" / f"round-{fleet_round:03d}"


def saved_config(out: Path) -> dict:
    """The settings a fleet run in `out` was started with (its config.json); a torn or foreign file
    (a power loss mid-write, another tool's) is one line naming it."""
    path = required_file(out, "config.json", "--resume", "fleet run directory")
    try:
        saved = read_json(path)
    except (OSError, ValueError) as e:          # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{path}: unreadable fleet run configuration ({e.__class__.__name__}: {e})") from None
    if not isinstance(saved, dict):
        raise InputError(f"{path}: not a fleet run configuration (a JSON {type(saved).__name__})")
    return saved


class FleetRun:
    """Open a new run directory (refusing a non-empty one unless overwrite), or resume one."""

    def __init__(self, out: Path, config: dict, resume: bool = False, overwrite: bool = False):
        self.out = Path(out)
        self.config = {"phase": "fleet", **config}
        if resume:
            self.records = self._records_to_resume()
            self.config = saved_config(self.out)    # it keeps its settings
        else:
            check_out_dir(self.out, overwrite, "fleet")
            start_out_dir(self.out, "fleet")
            with writing(self.out / "config.json"):
                atomic_write_bytes(self.out / "config.json", json.dumps(self.config, indent=2, default=str).encode())
            self.records = []
        self.writer = RecordWriter(self.out)
        if resume:
            self.writer.reset(self.records)     # drops a half-written last line

    def _records_to_resume(self) -> list[dict]:
        required_file(self.out, "config.json", "--resume", "fleet run directory")
        records = read_records(self.out / "metrics.jsonl")
        # The last round whose checkpoint is complete (the record is written after it).
        while records and not (round_dir(self.out, records[-1]["round"]) / "model.json").is_file():
            records.pop()
        return records

    @property
    def last_round(self) -> int | None:
        return self.records[-1]["round"] if self.records else None

    def start_dir(self, checkpoint: Path) -> Path:
        """The warmup (a new run) or the last completed round's checkpoint (a resumed one)."""
        return Path(checkpoint) if self.last_round is None else round_dir(self.out, self.last_round)

    def start_model(self, checkpoint: Path) -> tuple[torch.nn.Module, ModelCard]:
        return read_model(self.start_dir(checkpoint))

    def write_round(self, fleet_round: int, model: torch.nn.Module, card: ModelCard, evaluation: dict,
                    clients: list[dict], extra: dict, memory_from: Path | None = None) -> dict:
        """The round's global model first (then the top-level copy), then its record. `memory_from`:
        the checkpoint whose source memory (anchors, Fisher, source weights) every round carries, so
        that a round's model deploys with it; the card names it only where the files are."""
        card.training = {"phase": "fleet", "round": fleet_round, **{k: evaluation.get(k) for k in ("test_acc",)}}
        has_memory = memory_from is not None and has_source_memory(memory_from)
        if not has_memory:
            card.source_memory = None
        for target in (round_dir(self.out, fleet_round), self.out):
            save_checkpoint(target, model, card)
            if has_memory and Path(memory_from).resolve() != target.resolve():
                copy_source_memory(memory_from, target)
        record = round_record(fleet_round, evaluation, clients, extra)
        self.writer.append(record)
        self.records.append(record)
        self.write_summary()
        return record

    def write_summary(self, stop_reason: str | None = None) -> dict:
        """`stop_reason`: why the run ended before its last round (kept until a resume completes it)."""
        summary = summarize_rounds(self.records, {"phase": "fleet", "edge_sel_version": __version__,
                                                  "run_dir": str(self.out), "config": self.config,
                                                  **({"stop_reason": stop_reason} if stop_reason else {})})
        with writing(self.out / "summary.json"):
            atomic_write_bytes(self.out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
        return summary


def read_model(source: Path) -> tuple[torch.nn.Module, ModelCard]:
    source = Path(source)
    card = read_card(source)
    model = model_for_card(card)
    try:
        model.load_state_dict(read_weights(source))
    except RuntimeError as e:
        raise InputError(f"{source}: does not match architecture {card.architecture!r} "
                         f"({str(e).splitlines()[0]})") from None
    return model, card


def round_line(r: dict) -> str:
    """One round as the console shows it."""
    joules = "-" if r.get("energy_j") is None else f"{r['energy_j']:.1f} J"
    acc = "-" if r.get("test_acc") is None else f"{r['test_acc']:.4f}"
    return (f"round {r['round']:3d}  global test acc {acc}  fleet energy {joules} "
            f"({r.get('energy_method') or '-'})  samples trained {r.get('backward_samples') or 0}  "
            f"clients {r.get('clients_reporting', 0)}")


def round_record(fleet_round: int, evaluation: dict, clients: list[dict], extra: dict) -> dict:
    """Totals summed over the clients (see aggregate.combine), the global model's held-out accuracy,
    and each client's own report."""
    totals = combine([c["metrics"] for c in clients])
    sources = sorted({c["info"].get("energy_source", "none") for c in clients}) or ["none"]
    methods = sorted({c["info"].get("energy_method", "none") for c in clients}) or ["none"]
    available = totals.get("num-examples")
    trained = totals.get("samples_trained")
    return {
        # round 0 is the warmup's evaluation: a run's "baseline" record
        "round": fleet_round, "phase": "fleet" if fleet_round else "baseline", **extra, "clients_reporting": len(clients),
        "samples_available": available, "forward_samples": totals.get("forward_samples"),
        "backward_samples": trained,
        "activation": (trained / available) if available else None,
        "flops_forward": totals.get("flops_forward"), "flops_backward": totals.get("flops_backward"),
        "flops_scoring": totals.get("flops_scoring"), "flops_calibration": totals.get("flops_calibration"),
        "rolled_back_flops": totals.get("rolled_back_flops"),
        # every training pass of every client (forward + backward is only part of it)
        "flops_train": totals.get("flops_train"), "flops_eval": totals.get("flops_eval"),
        "energy_j": known(totals.get("energy_j")), "eval_energy_j": known(totals.get("eval_energy_j")),
        "energy_source": "+".join(sources), "energy_method": "+".join(methods),
        "wall_s": totals.get("wall_s"), "local_val_acc": totals.get("local_val_acc"),
        **evaluation,
        "clients": [{"client": c["client"], **{k: known(v) for k, v in c["metrics"].items()}, **c["info"]}
                    for c in clients],
    }


def known(value):
    """A reading that could not be taken (NaN) is recorded as None, as the records file stores it:
    a run's totals then read the same live and after a resume."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summarize_rounds(records: list[dict], extra: dict) -> dict:
    trained = [r for r in records if r["round"] > 0]

    def total(key):
        """The sum over the trained rounds; unknown (None) when any round's figure is unknown."""
        values = [known(r.get(key)) for r in trained]
        return sum(values) if values and None not in values else None

    per_client: dict[str, float | None] = {}
    for r in trained:
        for c in r.get("clients", []):
            name, joules = str(c["client"]), known(c.get("energy_j"))
            before = per_client.get(name, 0.0)
            per_client[name] = None if before is None or joules is None else before + joules
    first = records[0] if records else {}
    last = records[-1] if records else {}
    best = max(records, key=lambda r: r.get("test_acc") or -1) if records else {}
    return {
        **extra, "rounds_run": len(trained), "last_round": last.get("round"),
        "start": {"round": first.get("round"), "test_acc": first.get("test_acc")},
        "final": {"round": last.get("round"), "test_acc": last.get("test_acc"),
                  "local_val_acc": last.get("local_val_acc")},
        "best": {"round": best.get("round"), "test_acc": best.get("test_acc")},
        "totals": {"samples_trained": total("backward_samples"), "forward_samples": total("forward_samples"),
                   "flops_forward": total("flops_forward"), "flops_backward": total("flops_backward"),
                   "flops_scoring": total("flops_scoring"), "flops_calibration": total("flops_calibration"),
                   "rolled_back_flops": total("rolled_back_flops"), "flops_train": total("flops_train"),
                   "flops_eval": total("flops_eval"), "energy_j": total("energy_j"),
                   "eval_energy_j": total("eval_energy_j"),
                   "energy_source": last.get("energy_source"), "energy_method": last.get("energy_method")},
        "energy_by_client_j": per_client, "energy_note": ENERGY_NOTE,
        "flops_note": "counted with torch.utils.flop_counter for the passes the clients actually ran",
    }
