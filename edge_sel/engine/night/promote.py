"""Replace a device's deployed model with a run's output model, only when it beats the deployed
model itself on the run's local validation data, does not forget where it came from, and does not
lose what the deployed model serves: on every condition its BatchNorm bank keeps, the run's model
may fall at most `--max-forgetting` points below it (engine/night/served.py), and a decision says
which conditions' statistics a swap drops.

The guard (`--max-forgetting P`, the run's own value unless promote is given one) looks at the
guard anchors the run carries (engine/levers/anchors.py): a candidate more than P points below the source
model there, and below the deployed model, is not deployed however well it does tonight; and a
deployed model that has itself drifted more than P points is replaced by a candidate within P even
when the candidate's local validation accuracy is not higher (keeping the drifted model is what the
guard forbids; a reset to the source weights produces such candidates).

`decide` returns which rule decided; `promote` acts on it with the atomic swap of
engine/night/deployed_swap.py, and appends the decision and the deployment to the deployed model's
history (DEPLOYED.history.jsonl) and the run's (RUN/promote.jsonl), journals never rewritten
(engine/night/journal.py). A run whose model is already deployed is said to be so; nothing is written."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_sel.core.checkpoint import weights_digest
from edge_sel.core.outputs import refuse_onto_inputs
from edge_sel.engine.night import journal
from edge_sel.engine.night.deployed_swap import (MODEL_FILES, AfterSwapError, check_deployed_place, deployed_lock,
                                                 files_from_run, holding_deployed_lock, holds_deployed_lock,
                                                 migrated_from_plain, recover, swap_in, versions_dir)
from edge_sel.engine.night.promote_guard import Guard, pct, source_anchor_acc
from edge_sel.engine.night.run_settings import run_eval_batch, run_evaluation, run_summary
from edge_sel.engine.night.served import dropped_words, judge_served, loses_why, unjudged_words, worst_loss
from edge_sel.errors import InputError, WriteError, existing_dir, read_json, required_file

NOT_PROMOTED_EXIT = 3       # a run judged and not deployed: not a failure (the nightly script exits 0)


@dataclass
class Decision:
    promote: bool
    # interrupted | already-deployed | pretrain | other-start | no-validation | forgets | restores
    # | loses-condition | not-better | no-gain | better | new-condition | first | forced-first
    rule: str
    why: str
    candidate_val_acc: float | None = None
    deployed_val_acc: float | None = None
    evaluation: dict = field(default_factory=dict)    # the deployed model's validation pass: samples, FLOPs, time
    # The guard: accuracies on the run's guard anchors, the source model's reference, the limit in
    # points; `guard` says why it did not apply (None: it did).
    candidate_anchor_acc: float | None = None
    deployed_anchor_acc: float | None = None
    source_anchor_acc: float | None = None
    max_forgetting: float | None = None
    guard: str | None = None


def read_run(run_dir: Path) -> tuple[dict, dict]:
    run_dir = existing_dir(run_dir, "RUN")
    summary_file = required_file(run_dir, "summary.json", "RUN", "run directory")
    for name in MODEL_FILES:
        required_file(run_dir, name, "RUN")
    try:
        summary = read_json(summary_file)
        config = read_json(run_dir / "config.json")
    except (OSError, ValueError) as e:
        raise InputError(f"RUN {run_dir}: unreadable summary.json or config.json ({e.__class__.__name__})") from None
    for name, d in (("summary.json", summary), ("config.json", config)):
        if not isinstance(d, dict):
            raise InputError(f"RUN {run_dir}: {name} is not a run's record (JSON, but not a mapping)")
    return summary, config


def started_from(config: dict, deployed: Path) -> bool:
    """Whether the run's starting checkpoint is the model deployed now (by content; runs from
    before the digest was recorded, by resolved path)."""
    digest = config.get("checkpoint_sha256")
    if digest is not None:
        return digest == weights_digest(deployed)
    start = config.get("checkpoint")
    return start is not None and Path(start).resolve() == deployed.resolve()


def already_deployed(run_dir: Path, deployed: Path) -> bool:
    """Whether the deployed model is this run's own: every file the run would deploy (weights,
    card, bank, source memory) is there byte for byte. A run whose output is its start still
    differs by its card."""
    if not (Path(deployed) / "model.safetensors").is_file():
        return False
    return all(_same_bytes(Path(run_dir) / name, Path(deployed) / name) for name in files_from_run(run_dir))


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def decide(run_dir: Path, deployed: Path, force: bool = False, evaluate=None,
           max_forgetting: float | None = None) -> Decision:
    """The promote decision and the rule that made it. `evaluate(run_config, deployed, run_dir)`
    returns the deployed model's validation accuracy, its guard-anchor accuracy (None without
    anchors) and what the passes cost (default: validate_deployed). `max_forgetting`: the guard's
    limit in points (default: the run's `--max-forgetting`)."""
    run_dir, deployed = Path(run_dir), Path(deployed)
    summary, config = read_run(run_dir)
    source_acc = source_anchor_acc(run_dir)     # the card read first: one that is not JSON stops here
    # A run that evaluated a draw of the guard anchors states the source's accuracy on that draw,
    # which the deployed model is judged on too (validate_deployed).
    drawn = summary.get("guard_anchors") if isinstance(summary.get("guard_anchors"), dict) else {}
    if config.get("guard_subset") and isinstance(drawn.get("source_acc"), float):
        source_acc = drawn["source_acc"]
    out = summary.get("output_model") or {}
    candidate = out.get("val_acc", (summary.get("kept") or {}).get("kept_val_acc"))
    if summary.get("stop_reason") == "interrupted":
        return Decision(False, "interrupted", "the run was interrupted before its last epoch; resume it first")
    if already_deployed(run_dir, deployed):
        return Decision(False, "already-deployed", f"its model is the one deployed now "
                                                   f"({Path(deployed).resolve().name}); nothing to do", candidate)
    if summary.get("phase") == "pretrain" and not force:
        return Decision(False, "pretrain", "a pretrain directory, not a fine-tune of the deployed model; "
                                           "--force deploys it after the comparison")
    has_deployed = (deployed / "model.safetensors").is_file()
    if not has_deployed:
        # A bank that took tonight as a new condition changed the model even when its weights are the start's.
        if (summary.get("kept") or {}).get("kept") == "warmup" and not new_condition(summary):
            return Decision(False, "no-gain", "nothing is deployed and the run's output is its starting checkpoint "
                                              "(fine-tuning did not beat it)", candidate)
        return Decision(True, "forced-first" if summary.get("phase") == "pretrain" else "first",
                        "deployed: nothing was deployed before, so this run's model is the first", candidate)
    if not force and not started_from(config, deployed):
        start, digest = config.get("checkpoint"), config.get("checkpoint_sha256")
        # Both versions named, by weights where the run recorded them: one path may hold either.
        was = f" (weights {digest[:12]})" if digest else ""
        now = f"{deployed.resolve()} (weights {weights_digest(deployed)[:12]})"
        said = (f"the run started from the model deployed at {start} then{was}, and another has been deployed "
                f"since: {now}" if start is not None and Path(start).absolute() == deployed.absolute()
                else f"the run started from {start}{was}, not from the model deployed now, {now}")
        return Decision(False, "other-start", f"{said}; --force judges it against it anyway",
                        candidate)
    if candidate is None:
        return Decision(False, "no-validation", "the run has no validation accuracy to compare", candidate)
    if (summary.get("kept") or {}).get("kept") == "warmup" and new_condition(summary):
        # The deployed weights, judged with the run's statistics, are the candidate itself: what
        # changes is the bank, which now keeps tonight's condition.
        return Decision(True, "new-condition", f"the run's weights are the deployed model's, and its BatchNorm "
                                               f"statistics add tonight's condition "
                                               f"({summary['bn_bank']['tonight'].get('condition')}), which the "
                                               f"deployed model does not keep", candidate)
    deployed_acc, deployed_anchor, cost = (evaluate or validate_deployed)(config, deployed, run_dir)
    limit = max_forgetting if max_forgetting is not None else config.get("max_forgetting")
    guard = Guard(out.get("anchor_acc"), deployed_anchor, source_acc, limit)
    numbers = dict(candidate_val_acc=candidate, deployed_val_acc=deployed_acc, evaluation=cost,
                   candidate_anchor_acc=guard.candidate, deployed_anchor_acc=guard.deployed,
                   source_anchor_acc=guard.source, max_forgetting=limit, guard=guard.not_applied())
    served = (cost or {}).get("served")     # what the deployed model serves: its bank's conditions

    def said(promoted: bool) -> str:
        return dropped_words(served, promoted) + unjudged_words(served)
    if guard.forgets():
        return Decision(False, "forgets", guard.forgets_why() + said(False), **numbers)
    if guard.restores():
        return Decision(True, "restores", guard.restores_why(candidate, deployed_acc) + said(True), **numbers)
    loses = worst_loss(served, limit)
    if loses is not None:
        return Decision(False, "loses-condition", f"{loses_why(loses, limit)}; validation accuracy {pct(candidate)}, "
                                                  f"the deployed model's {pct(deployed_acc)}{said(False)}", **numbers)
    judged = JUDGED_WITH_RUN_BANK if (cost or {}).get("bn_bank") == "the run's" else ""
    if deployed_acc is not None and candidate <= deployed_acc:
        return Decision(False, "not-better", f"validation accuracy {pct(candidate)} does not beat the deployed "
                                             f"model's {pct(deployed_acc)}{judged}{said(False)}", **numbers)
    return Decision(True, "better", f"validation accuracy {pct(candidate)} beats the deployed model's "
                                    f"{pct(deployed_acc)}{judged}{said(True)}", **numbers)


# Said beside the deployed model's figure when it was judged with the run's bank, so that a reader
# finds it equal to the run's starting figure and knows why it is not what the model scores alone.
JUDGED_WITH_RUN_BANK = (" (its weights with the run's BatchNorm statistics per condition, tonight's included, as "
                        "the run judged its start)")


def validate_deployed(config: dict, deployed: Path, run_dir: Path | None = None) -> tuple[float | None, float | None, dict]:
    """The deployed model on the run's validation samples (the same draw of `--val-subset`) and on
    the guard anchors the run carries (when it has them), with the passes' counted FLOPs and wall
    time (`flops` and `wall_s` include the anchors; `anchor_*` is their part). `wall_s` is the
    validation passes alone; `total_s` adds reading and shifting the data, loading the model and
    re-estimating the run's bank, all of which a meter window around this call also holds."""
    started = time.monotonic()
    import torch

    from edge_sel.core.flops import FlopCounter
    from edge_sel.engine.levers.anchors import load_memory
    from edge_sel.engine.levers.guard_set import guard_subset
    from edge_sel.engine.machine.layout import FORMATS
    from edge_sel.engine.machine.precision import autocast
    from edge_sel.engine.evaluation.bn_bank import attach_saved_bank, run_bank_for
    from edge_sel.engine.evaluation.evaluate import accuracy, evaluation_flops, predict_dataset, validation_subset
    from edge_sel.engine.runs.data_options import DataOptions, check_compatible
    from edge_sel.models import load_checkpoint
    from edge_sel.predict.conditions import feature_flops
    from edge_sel.threads import torch_threads
    data = DataOptions(**{**config["data"], "data_dir": config["data"].get("data_dir")})
    splits = data.load()
    model, card = load_checkpoint(deployed)
    check_compatible(card, splits, deployed)
    val = validation_subset(splits.val, config.get("val_subset") or 0)
    memory = None if run_dir is None else load_memory(Path(run_dir), card, splits.train)
    summary = run_summary(run_dir)          # read once: the batch and the settings below
    batch = config.get("eval_batch_size") or run_eval_batch(summary) or 256
    # The run's evaluation settings: a float sum changes with the precision, the layout's kernels
    # and the threads that split it, and with it the last digit of the start's figures.
    settings = run_evaluation(summary)
    memory_format = FORMATS[settings["memory_format"]]
    model = model.to(memory_format=memory_format)
    counter = FlopCounter(model, list(splits.val.input_shape))
    # Judged as the run judged its start: with the run's bank (tonight's condition included), each
    # condition re-estimated for the deployed weights; without one, with the deployed model's own.
    bank = None if run_dir is None else run_bank_for(model, Path(run_dir), card,
                                                     memory.source if memory is not None else None)
    refreshed = {"flops": 0, "samples": 0}
    if bank is not None:
        with torch_threads(settings["threads"]), autocast(torch.device("cpu"), settings["eval"]):
            refreshed = bank.refresh(model, counter, batch, memory_format)
        bank.attach(model)
        judged_with = "the run's"
    else:
        bank = attach_saved_bank(model, deployed, card)     # its statistics per condition, if it keeps them
        judged_with = "its own" if bank is not None else None

    def judge(ds) -> tuple[float | None, float, int]:
        t0 = time.perf_counter()
        with torch.inference_mode(), torch_threads(settings["threads"]), \
                autocast(torch.device("cpu"), settings["eval"]):
            logits = predict_dataset(lambda x: model.eval()(x).float(), ds, card.mean, card.std, batch,
                                     memory_format)
        flops = evaluation_flops(counter, len(ds), batch)
        if bank is not None:        # choosing each image's condition: its features and distances
            flops += bank.take_selected() * bank.choice_flops(list(splits.val.input_shape))
        return accuracy(logits, ds.labels), time.perf_counter() - t0, flops
    described = 0 if bank is None else sum(len(c.images) for c in bank.conditions) * feature_flops(splits.val.input_shape)
    val_acc, wall, flops = judge(val)
    flops += described + refreshed["flops"]     # the conditions described once to choose between them; re-estimated
    cost = {"samples": len(val), "flops": flops, "wall_s": wall, "device": "cpu", "energy": "not measured",
            "judged_as": {"precision": settings["eval"], "memory_format": settings["memory_format"],
                          "eval_batch_size": batch, "threads": settings["threads"]},
            **({"flops_bank_choice": described, "bn_bank": judged_with} if bank is not None else {}),
            **({"flops_bank_estimate": refreshed["flops"]} if refreshed["flops"] else {})}
    anchor_acc = None
    if memory is not None:
        anchors = guard_subset(memory.guard, config.get("guard_subset") or 0)     # the run's draw of them
        anchor_acc, anchor_wall, anchor_flops = judge(anchors)
        cost.update(flops=flops + anchor_flops, wall_s=wall + anchor_wall, anchor_samples=len(anchors),
                    anchor_flops=anchor_flops, anchor_wall_s=anchor_wall)
    served = None if run_dir is None else judge_served(deployed, Path(run_dir), settings, batch)
    if served is not None:      # the deployed bank's conditions, both models judged on each
        cost.update(flops=cost["flops"] + served.flops, served=served.record())
    cost["total_s"] = time.monotonic() - started
    return val_acc, anchor_acc, cost


def repair_deployed(deployed: Path) -> None:
    """A swap cut off between its two renames (filesystems without an atomic exchange) leaves no
    deployed path for an instant: repaired before anything reads it (the night before it chooses its
    start, promote before it judges), or a WriteError in one line."""
    try:
        recover(deployed)
    except OSError as e:
        raise WriteError(f"--deployed {deployed}: cannot repair an interrupted swap ({e.strerror or e})") from None


@holding_deployed_lock          # judged and swapped with no other change of the deployed link between
def promote(run_dir: Path, deployed: Path, force: bool = False, evaluate=None,
            max_forgetting: float | None = None, _again: bool = False) -> Decision:
    """Decide, swap when promoted, and record the decision: a line in the deployed model's journal
    and in the run's (before the swap), then what came of it (deployed, or swap-failed)."""
    check_deployed_place(deployed)
    # The deployed link and its versions are promote's outputs: never the run it reads, nor inside it.
    refuse_onto_inputs(deployed, [("RUN", run_dir)], "--deployed")
    refuse_onto_inputs(versions_dir(deployed), [("RUN", run_dir)], "--deployed")
    repair_deployed(deployed)
    decision = decide(run_dir, deployed, force, evaluate, max_forgetting)
    if decision.rule == "already-deployed":
        return decision         # nothing changes, so nothing is written
    record = {**asdict(decision), "run": str(run_dir), "deployed": str(deployed), "force": force,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if decision.promote:
        check_candidate(run_dir)        # before anything is written: a model predict cannot load is not deployed
    else:
        _journal(deployed, "decision", record)
        _record(run_dir, "decision", record)
        return decision
    if not holds_deployed_lock(deployed) and not _again:
        # Nothing was ever deployed here: the lock's folder did not exist, so none was held while
        # judging. Made now, the lock is taken and the run judged again under it: of two first
        # promotes at once, the second then finds the first's model deployed.
        try:
            deployed.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"--deployed {deployed}: cannot create {deployed.parent} ({e.strerror or e}); "
                             f"nothing is deployed") from None
        with deployed_lock(deployed, create=True):
            return promote(run_dir, deployed, force, evaluate, max_forgetting, _again=True)
    # The decision is recorded before the swap: a crash after the link flips must not leave a
    # deployed model whose acceptance no record holds (a decision without a `deployed` line after it
    # means the swap may or may not have happened).
    try:
        deployed.parent.mkdir(parents=True, exist_ok=True)
        journal.append(deployed, "decision", **_fields(record))
    except OSError as e:
        raise WriteError(f"--deployed {deployed}: cannot write its history {journal.journal_path(deployed)} "
                         f"({e.strerror or e}); the deployed model is unchanged") from None
    _record(run_dir, "decision", record)
    previous = deployed.resolve() if deployed.is_symlink() else None
    plain = previous is None and (deployed / "model.safetensors").is_file()     # migrated by the swap, kept
    after = {}                  # what failed after the flip, if anything
    try:
        version = swap_in(run_dir, deployed)
    except AfterSwapError as e:          # deployed all the same: say what failed after, keep the record
        version = e.version
        after = {"after_swap_error": str(e)}
        print(f"edge-sel: warning: --deployed {deployed} now holds the run's model ({version.name}), but a "
              f"step after the swap failed ({e}); the previous version may not have been pruned",
              file=sys.stderr, flush=True)
    except OSError as e:
        failed = {"run": str(run_dir), "error": str(e)}
        unsaid = "" if _journal(deployed, "swap-failed", failed, warn=False) else \
            f", and {journal.journal_path(deployed).name} cannot record that"        # one line says both
        _record(run_dir, "swap-failed", failed)
        raise WriteError(f"--deployed {deployed}: cannot replace the deployed model ({e.strerror or e}); "
                         f"it is unchanged{unsaid}") from None
    if plain:
        previous = migrated_from_plain(version)
    done = {"run": str(run_dir), "version": str(version), "rule": decision.rule,
            "previous": None if previous is None else str(previous), **after}
    _journal(deployed, "deployed", done)
    _record(run_dir, "deployed", done)
    return decision


def check_candidate(run_dir: Path) -> None:
    """The run's model loaded as predict and the next run will load it (its card parsed, its
    weights loaded into the model the card describes), first deployment included; an InputError
    naming the file at fault."""
    from edge_sel.models import load_checkpoint
    try:
        load_checkpoint(Path(run_dir))
    except InputError as e:
        raise InputError(f"RUN {run_dir}: its model cannot be deployed: {e}") from None


def _fields(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("when", "deployed")}     # the journal is the deployed place's


def _journal(deployed: Path, event: str, record: dict, warn: bool = True) -> bool:
    """A line in the deployed model's history; False when it cannot be written (said with `warn`)."""
    if not deployed.parent.is_dir():
        return True             # nothing was ever deployed there, and a decision not to changes nothing
    try:
        journal.append(deployed, event, **_fields(record))
        return True
    except OSError as e:
        if warn:
            print(f"edge-sel: warning: {journal.journal_path(deployed)}: cannot write ({e.strerror or e}); this "
                  f"{event} is not in the deployed model's history", file=sys.stderr, flush=True)
        return False


def _record(run_dir: Path, event: str, record: dict) -> None:
    """A line appended to the run's own journal (RUN/promote.jsonl): nothing earlier is rewritten."""
    try:
        journal.append_to(journal.run_path(run_dir), event, **{k: v for k, v in record.items() if k != "when"})
    except OSError:
        pass        # the decision stands (and is printed); a read-only run directory keeps no record of it


def new_condition(summary: dict) -> bool:
    """Whether the run's BatchNorm bank (--bn-conditions) added tonight as a condition."""
    bank = summary.get("bn_bank") or {}
    return bool(bank.get("written") and (bank.get("tonight") or {}).get("new"))
