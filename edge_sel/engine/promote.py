"""Replace a device's deployed model with a run's output model, only when it beats the deployed
model itself on the run's local validation data.

`decide` returns which rule decided (a later anchor-set check adds its own rule there); `promote`
acts on it with the atomic swap of engine/deployed_swap.py and writes RUN/promote.json."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_sel.core.checkpoint import atomic_write_bytes, weights_digest
from edge_sel.engine.deployed_swap import MODEL_FILES, recover, swap_in
from edge_sel.errors import InputError, WriteError, existing_dir, required_file

NOT_PROMOTED_EXIT = 3       # a run judged and not deployed: not a failure (the nightly script exits 0)


@dataclass
class Decision:
    promote: bool
    rule: str                 # interrupted | pretrain | other-start | no-validation | not-better | no-gain | better | first | forced-first
    why: str
    candidate_val_acc: float | None = None
    deployed_val_acc: float | None = None
    evaluation: dict = field(default_factory=dict)    # the deployed model's validation pass: samples, FLOPs, time


def read_run(run_dir: Path) -> tuple[dict, dict]:
    run_dir = existing_dir(run_dir, "RUN")
    summary_file = required_file(run_dir, "summary.json", "RUN", "run directory")
    for name in MODEL_FILES:
        required_file(run_dir, name, "RUN")
    try:
        summary = json.loads(summary_file.read_text())
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"RUN {run_dir}: unreadable summary.json or config.json ({e.__class__.__name__})") from None
    return summary, config


def started_from(config: dict, deployed: Path) -> bool:
    """Whether the run's starting checkpoint is the model deployed now (by content; runs from
    before the digest was recorded, by resolved path)."""
    digest = config.get("checkpoint_sha256")
    if digest is not None:
        return digest == weights_digest(deployed)
    start = config.get("checkpoint")
    return start is not None and Path(start).resolve() == deployed.resolve()


def decide(run_dir: Path, deployed: Path, force: bool = False, evaluate=None) -> Decision:
    """The promote decision and the rule that made it. `evaluate(run_config, deployed)` returns
    the deployed model's validation accuracy and what the pass cost (default: validate_deployed)."""
    run_dir, deployed = Path(run_dir), Path(deployed)
    summary, config = read_run(run_dir)
    out = summary.get("output_model") or {}
    candidate = out.get("val_acc", (summary.get("kept") or {}).get("kept_val_acc"))
    if summary.get("stop_reason") == "interrupted":
        return Decision(False, "interrupted", "the run was interrupted before its last epoch; resume it first")
    if summary.get("phase") == "pretrain" and not force:
        return Decision(False, "pretrain", "a pretrain directory, not a fine-tune of the deployed model; "
                                           "--force deploys it after the comparison")
    has_deployed = (deployed / "model.safetensors").is_file()
    if not has_deployed:
        if (summary.get("kept") or {}).get("kept") == "warmup":
            return Decision(False, "no-gain", "nothing is deployed and the run's output is its starting checkpoint "
                                              "(fine-tuning did not beat it)", candidate)
        return Decision(True, "forced-first" if summary.get("phase") == "pretrain" else "first",
                        "nothing was deployed", candidate)
    if not force and not started_from(config, deployed):
        return Decision(False, "other-start", f"the run started from {config.get('checkpoint')}, not from the "
                                              f"model deployed now; --force judges it against it anyway", candidate)
    if candidate is None:
        return Decision(False, "no-validation", "the run has no validation accuracy to compare", candidate)
    deployed_acc, cost = (evaluate or validate_deployed)(config, deployed)
    if deployed_acc is not None and candidate <= deployed_acc:
        return Decision(False, "not-better", f"validation accuracy {_pct(candidate)} does not beat the deployed "
                                             f"model's {_pct(deployed_acc)}", candidate, deployed_acc, cost)
    return Decision(True, "better", f"validation accuracy {_pct(candidate)} beats the deployed model's "
                                    f"{_pct(deployed_acc)}", candidate, deployed_acc, cost)


def validate_deployed(config: dict, deployed: Path) -> tuple[float | None, dict]:
    """The deployed model on the run's validation samples (the same draw of `--val-subset`), with
    the pass's counted FLOPs and wall time."""
    import torch

    from edge_sel.core.flops import FlopCounter
    from edge_sel.engine.evaluate import accuracy, evaluation_flops, predict_dataset, validation_subset
    from edge_sel.engine.run import DataOptions, check_compatible
    from edge_sel.models import load_checkpoint
    data = DataOptions(**{**config["data"], "data_dir": config["data"].get("data_dir")})
    splits = data.load()
    model, card = load_checkpoint(deployed)
    check_compatible(card, splits, deployed)
    val = validation_subset(splits.val, config.get("val_subset") or 0)
    batch = config.get("eval_batch_size") or 256
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = predict_dataset(lambda x: model.eval()(x).float(), val, card.mean, card.std, batch)
    wall = time.perf_counter() - t0
    flops = evaluation_flops(FlopCounter(model, list(splits.val.input_shape)), len(val), batch)
    return accuracy(logits, val.labels), {"samples": len(val), "flops": flops, "wall_s": wall,
                                          "device": "cpu", "energy": "not measured"}


def promote(run_dir: Path, deployed: Path, force: bool = False, evaluate=None) -> Decision:
    """Decide, swap when promoted, and record the decision in RUN/promote.json."""
    run_dir, deployed = Path(run_dir), Path(deployed)
    try:
        recover(deployed)
    except OSError as e:
        raise WriteError(f"--deployed {deployed}: cannot repair an interrupted swap ({e.strerror or e})") from None
    decision = decide(run_dir, deployed, force, evaluate)
    record = {**asdict(decision), "run": str(run_dir), "deployed": str(deployed), "force": force,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if decision.promote:
        try:
            version = swap_in(run_dir, deployed)
        except OSError as e:
            raise WriteError(f"--deployed {deployed}: cannot replace the deployed model ({e.strerror or e}); "
                             f"it is unchanged") from None
        record["version"] = str(version)
    try:
        atomic_write_bytes(run_dir / "promote.json", json.dumps(record, indent=2).encode())
    except OSError:
        pass        # the decision stands (and is printed); a read-only run directory keeps no record of it
    return decision


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
