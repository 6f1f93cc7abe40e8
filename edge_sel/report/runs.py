"""Run directories as the report sees them: records, summary, config, a label, and totals
computed from the records (so runs made of several phases add up the same way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_sel.core.records import read_records
from edge_sel.errors import InputError, existing_dir, parse_json, read_json, required_file

MEASURED_METHODS = ("counter", "integrated")


@dataclass
class RunData:
    label: str
    records: list[dict]
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    group: str | None = None          # runs of one system over several seeds share a group
    extra: dict = field(default_factory=dict)   # e.g. full-test accuracy measured after the run
    baseline: dict | None = None      # the starting checkpoint's evaluation before any step (fine-tunes)
    warnings: list[str] = field(default_factory=list)   # files found cut or missing, said on the page

    @property
    def class_names(self) -> list[str]:
        first = self.records[0] if self.records else {}
        return [k[len("acc_"):] for k in first if k.startswith("acc_")]


def _read_json(path: Path) -> tuple[dict, str | None]:
    """The object in a JSON file and, when it is missing or unreadable, what is wrong with it."""
    try:
        data = read_json(path)          # never through a link (refused); nested too deeply: unreadable
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError):
        return {}, "unreadable (cut off mid-write?)"
    return (data, None) if isinstance(data, dict) else ({}, "not a JSON object")


def load_run(path: Path, label: str | None = None) -> RunData:
    """One run directory; a missing or empty metrics.jsonl is a usage error naming the directory.
    A metrics.jsonl cut mid-record, or a missing or torn summary.json, loads with a warning."""
    path = existing_dir(path, "RUN")
    metrics = required_file(path, "metrics.jsonl", "RUN", "run directory")
    records = read_records(metrics)
    if not records:
        raise InputError(f"RUN {path}: metrics.jsonl holds no complete records")
    config, _ = _read_json(path / "config.json")
    summary, summary_problem = _read_json(path / "summary.json")
    baseline = next((r for r in records if r.get("phase") == "baseline"), None)
    epochs = [r for r in records if r.get("phase") != "baseline"]
    if config.get("phase") == "fleet":
        label = label or describe_fleet(config)
    run = RunData(label or path.name, epochs or records, config, summary, [path],
                  baseline=baseline if epochs else None)
    run.warnings = file_warnings(metrics, records, summary, summary_problem)
    return run


def name_shifts(runs: list[RunData]) -> None:
    """A run is named by its folder (what the user named it, what a reader finds on disk); where the
    runs' data were shifted differently (a device's nights), each name says its shift."""
    shifts = [(r.config.get("data") or {}).get("shift") for r in runs]
    if len(set(shifts)) > 1:
        for r, shift in zip(runs, shifts):
            if r.group is None and r.paths and r.label == r.paths[-1].name:
                r.label = f"{r.label} ({shift or 'no shift'})"


def file_warnings(metrics: Path, records: list[dict], summary: dict, summary_problem: str | None) -> list[str]:
    """What the report cannot vouch for: lines of metrics.jsonl that did not parse, epochs the
    summary states that the records lack, a summary.json that is missing or torn."""
    out = []
    lines = [line for line in metrics.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) > len(records):
        out.append(f"metrics.jsonl: {len(lines) - len(records)} of {len(lines)} lines unreadable (cut off "
                   f"mid-write?); the per-epoch figures show the {len(records)} complete records only")
    trained = len([r for r in records if r.get("phase") != "baseline"])
    stated = summary.get("epochs_run")
    if isinstance(stated, int) and stated > trained:
        out.append(f"metrics.jsonl holds {trained} of the {stated} epochs summary.json states; the per-epoch "
                   "figures stop early")
    if summary_problem is not None:
        out.append(f"summary.json {summary_problem}: the model this run hands back is unknown, so its figures "
                   "show the last epoch's accuracy, and best validation comes from the records that remain")
    return out


def describe(config: dict, records: list[dict]) -> str:
    """A short name from what the run did: strategy, preset, updater, target activation."""
    method = config.get("method") or {}
    parts = [str(config.get("strategy") or records[0].get("strategy") or "run")]
    if method.get("gate"):
        parts[0] += f"+{method['gate']}"
    if method.get("preset"):
        parts.append(str(method["preset"]))
    sparsity = config.get("sparsity")
    if sparsity and sparsity != "none":
        parts.append(str(sparsity))
    if method.get("target_activation") is not None and not method.get("preset"):
        parts.append(f"a={method['target_activation']:g}")
    if config.get("epochs") == 0:
        parts[0] = "no training"
    if config.get("bn_adapt") and not method.get("preset"):
        parts.append(f"bn-adapt {config['bn_adapt']}")
    if config.get("bn_conditions"):
        parts.append(f"bn-conditions {config['bn_conditions']}")
    return " ".join(parts)


def describe_fleet(config: dict) -> str:
    try:
        method = parse_json(config.get("method") or "{}")
    except (TypeError, ValueError):
        method = {}
    method = method if isinstance(method, dict) else {}
    name = f"{config.get('fleet-strategy', 'fleet')} {config.get('strategy', 'dense')}"
    if method.get("gate"):
        name += f"+{method['gate']}"
    if method.get("target_activation") is not None:
        name += f" a={method['target_activation']:g}"
    return name


def unique_labels(runs: list[RunData]) -> None:
    """Runs with the same label (and no group) get their parent directory's name before it."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1 and r.group is None and r.paths:
            r.label = f"{r.paths[-1].parent.name}/{r.label}"


def combine_phases(phases: list[RunData], label: str, group: str | None = None) -> RunData:
    """Runs trained one after the other (e.g. lottery: dense, then pruned) as one run; epochs are
    renumbered and each record keeps the name of its phase in `bench_phase`."""
    records, epoch = [], 0
    for i, run in enumerate(phases):
        for r in run.records:
            records.append({**r, "epoch": epoch, "bench_phase": run.extra.get("phase_name", f"phase {i + 1}")})
            epoch += 1
    last = phases[-1]
    return RunData(label, records, last.config, last.summary, [p for run in phases for p in run.paths], group)


def _sum(records: list[dict], key: str):
    vals = [r.get(key) for r in records if isinstance(r.get(key), (int, float))]
    return sum(vals) if vals else None


def energy_kind(records: list[dict]) -> tuple[str | None, str | None]:
    """(sources, kind) over the records: kind is 'estimated', 'measured: <source>' or 'mixed'."""
    sources = sorted({r.get("energy_source") for r in records if r.get("energy_source")})
    methods = sorted({r.get("energy_method") for r in records if r.get("energy_method")})
    if not sources:
        return None, None
    source = "+".join(sources)
    if all(m == "estimated" for m in methods):
        return source, "estimated"
    shared = max((r["energy_shared_with"] for r in records if r.get("energy_shared_with")), default=0)
    if shared or any(m.endswith("+shared") for m in methods):
        # NVML reads the whole card: with other processes on it the joules are theirs too.
        return source, f"shared: {source}, the whole card's joules with {shared or 'other'} other process(es)"
    if all(any(part in MEASURED_METHODS for part in m.split("+")) and "estimated" not in m for m in methods):
        return source, f"measured: {source}"
    return source, "mixed"


def totals(run: RunData) -> dict:
    recs = run.records
    available = _sum(recs, "samples_available") or 0
    trained = _sum(recs, "backward_samples") or 0
    gate_rows = [r for r in recs if r.get("gate_activation") is not None]
    gate_activation = None
    if gate_rows:
        weight = sum(r.get("samples_available") or 0 for r in gate_rows)
        gate_activation = sum(r["gate_activation"] * (r.get("samples_available") or 0) for r in gate_rows) / weight \
            if weight else None
    source, kind = energy_kind(recs)
    act_rows = [r for r in recs if isinstance(r.get("activation"), (int, float))]
    act_weight = sum(r.get("samples_available") or 0 for r in act_rows)
    # As the records say it: a record's activation is its share of the local data trained on
    # (replayed source images are not local samples, so backward_samples can exceed it).
    activation = (sum(r["activation"] * (r.get("samples_available") or 0) for r in act_rows) / act_weight
                  if act_weight else (trained / available if available else None))
    best = max(recs, key=lambda r: r.get("val_acc") if r.get("val_acc") is not None else -1)
    stated_best = run.summary.get("best_val") or {}
    if stated_best.get("val_acc") is not None:     # the whole run's, also where metrics.jsonl was cut
        best = stated_best
    energy = _sum(recs, "energy_j")
    trained_epochs = [r for r in recs if r.get("phase") != "baseline"]     # a run of --epochs 0 has only its baseline
    last = trained_epochs[-1] if trained_epochs else {}
    return {
        **output_model(run),
        "method": describe_fleet(run.config) if run.config.get("phase") == "fleet" else describe(run.config, recs),
        "epochs": len(trained_epochs),
        "final_test_acc": last.get("test_acc"), "final_val_acc": last.get("val_acc"),
        "best_val_acc": best.get("val_acc"),
        # A run of no epoch has only its start's validation (epoch -1 in the records).
        "best_val_epoch": "start" if best.get("epoch") == -1 else best.get("epoch"),
        "test_at_best_val": best.get("test_acc"),
        "samples_trained": trained, "activation": activation,
        "gate_activation": gate_activation,
        "flops_forward": _sum(recs, "flops_forward"), "flops_backward": _sum(recs, "flops_backward"),
        "flops_scoring": _sum(recs, "flops_scoring") or 0, "flops_calibration": _sum(recs, "flops_calibration") or 0,
        "flops_train": _sum(recs, "flops_train"),
        # --bn-conditions: the bank's re-estimation passes (in flops_eval): how such a run adapts.
        "flops_bn_bank": _sum(recs + ([run.baseline] if run.baseline else []), "flops_bn_bank"),
        "flops_eval": _sum(recs + ([run.baseline] if run.baseline else []), "flops_eval"),
        "train_wall_s": _sum(recs, "wall_s"), "eval_wall_s": _sum(recs, "eval_wall_s"),
        "energy_j": energy, "energy_per_epoch_j": energy / len(trained_epochs) if energy is not None and trained_epochs
        else None,
        "eval_energy_j": _sum(recs + ([run.baseline] if run.baseline else []), "eval_energy_j"),
        "energy_source": source, "energy_kind": kind,
        **run.extra.get("totals", {}),
    }


def handed_back_acc(t: dict) -> tuple[float | None, bool]:
    """The test accuracy a run's figures show, from its totals: the output model's (True), or the
    last epoch's where the run states no output model (False: said so beside the figure)."""
    if t.get("output_test_acc") is not None:
        return t["output_test_acc"], True
    return t.get("final_test_acc"), False


def adaptation_flops(t: dict) -> float | None:
    """Counted FLOPs spent adapting: training, and a bank's re-estimation passes (a --bn-conditions
    run of no epoch adapts by those alone)."""
    if t.get("flops_train") is None and t.get("flops_bn_bank") is None:
        return None
    return (t.get("flops_train") or 0) + (t.get("flops_bn_bank") or 0)


# summary.json's kept.rule, as the report's column says it.
RULE_WORDS = {"best": "best validation", "warmup": "nothing beat the start", "forgets": "guard refused the rest",
              "bn_adapt": "best validation", "last": "--keep last", "no_validation": "no validation data",
              "interrupted": "interrupted"}


def output_model(run: RunData) -> dict:
    """The model the run hands back (what promote would deploy), as summary.json states it: which
    weights, the rule that chose them, its accuracy on the device's test data and, where the run's
    data were shifted, on the server's clean test data (the record of the epoch it is, or the
    baseline's for the starting checkpoint)."""
    out = run.summary.get("output_model") or {}
    kept = run.summary.get("kept") or {}
    if not out:
        return {"output_model": None, "output_test_acc": None, "output_clean_test_acc": None, "output_rule": None}
    weights, epoch = out.get("weights"), out.get("epoch")
    which = {"best": f"epoch {epoch}", "last": f"epoch {epoch} (last)", "warmup": "start",
             "bn_adapt": "start, BatchNorm re-estimated"}.get(weights, str(weights))
    if (run.summary.get("bn_bank") or {}).get("written"):
        which += " + statistics per condition"
    rule = RULE_WORDS.get(kept.get("rule"), kept.get("rule"))
    baselines = [run.baseline] if run.baseline else [r for r in run.records if r.get("phase") == "baseline"]
    source = baselines if weights == "warmup" else \
        [r for r in run.records if r.get("epoch") == epoch and r.get("phase") != "baseline"]
    clean = out.get("clean_test_acc", source[-1].get("clean_test_acc") if source else None)
    return {"output_model": which + (f" ({rule})" if rule else ""), "output_test_acc": out.get("test_acc"),
            "output_clean_test_acc": clean, "output_rule": rule}


def energy_axis_label(runs: list[RunData], what: str = "energy") -> str:
    """'energy (J, estimated)' or 'energy (J, measured: nvml)': the figure says what it is."""
    kinds = {energy_kind(r.records)[1] for r in runs} - {None}
    if not kinds:
        return f"{what} (J, not measured)"
    if len(kinds) == 1:
        return f"{what} (J, {kinds.pop()})"
    return f"{what} (J, mixed: {', '.join(sorted(kinds))})"
