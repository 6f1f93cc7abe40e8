"""summary.json's totals over a run's records, and which weights the run hands back."""

from __future__ import annotations

from edge_sel.core.records import planning_of
from edge_sel.energy.base import SHARED
from edge_sel.engine.loop.val_size import MIN_SAMPLES
from edge_sel.engine.runs.memory_summary import memory_block


def summarize(records: list[dict], extra: dict, baseline: dict | None = None, kept: dict | None = None) -> dict:
    """Totals over the epoch records; the baseline evaluation (when a fine-tune made one) adds its
    evaluation FLOPs and joules, and `kept` says which weights the run directory holds and why."""
    last = records[-1] if records else {}
    best = max(records, key=lambda r: r.get("val_acc") or -1) if records else {}
    evaluated = ([baseline] if baseline else []) + records

    def total(key, over=records):
        vals = [r.get(key) for r in over if r.get(key) is not None]
        return sum(vals) if vals else None

    train_j, eval_j = total("energy_j"), total("eval_energy_j", evaluated)
    # A run of no epoch that planned under --memory-budget: its baseline carries the plan's cost.
    plan_s, plan_j, plan_flops = (total(k, [baseline] if baseline else []) for k in
                                  ("memory_plan_wall_s", "memory_plan_energy_j", "memory_plan_trial_flops"))
    train_j = train_j if plan_j is None else (train_j or 0) + plan_j
    # Choosing before the first step (a memory plan, a default choice), inside the first epoch's wall_s
    # and energy_j (a run of no epoch: its start's), said apart on the closing lines.
    planned = [planning_of(r) for r in evaluated]
    planning_s = sum(seconds for seconds, _, _ in planned)
    planning_j = [joules for _, joules, _ in planned if joules is not None]
    probe_flops = (extra.get("layout") or {}).get("probe_flops") or 0
    counted_sharing = any("energy_shared_with" in r for r in evaluated)
    shared_with = max((r["energy_shared_with"] for r in evaluated if r.get("energy_shared_with") is not None),
                      default=None)
    return {
        **extra,
        "epochs_run": len(records),
        # The weights the run directory holds (the best epoch, the start, or the last) on the test set.
        "output_model": flag_small_validation(output_model(last, kept, records, baseline), kept, extra),
        "final": {k: last.get(k) for k in ("val_acc", "test_acc", "train_loss", "train_acc")},
        "best_val": {"epoch": best.get("epoch"), "val_acc": best.get("val_acc"), "test_acc": best.get("test_acc"),
                     **({"stage": best["stage"]} if best.get("stage") else {})},     # a pretrain's head or fine-tune
        "totals": {
            "samples_trained": total("backward_samples"),
            "forward_samples": total("forward_samples"),
            "flops_forward": total("flops_forward"), "flops_backward": total("flops_backward"),
            "flops_scoring": total("flops_scoring"), "flops_calibration": total("flops_calibration"),
            "flops_train": total("flops_train"),
            # Levers against forgetting, when they ran: the penalty's counted FLOPs (in flops_train) and
            # the replayed anchors (in samples_trained).
            **{k: total(k) for k in ("flops_penalty", "replay_samples") if total(k) is not None},
            "rolled_back_flops": total("rolled_back_flops"), "rolled_back_samples": total("rolled_back_samples"),
            "rolled_back_s": total("rolled_back_s"), "rolled_back_j": total("rolled_back_j"),
            "flops_eval": total("flops_eval", evaluated),
            # --sparsity budget's trials (in the first epoch's flops_train; a run of no epoch: its start's);
            # --bn-conditions: the bank's re-estimations and fingerprints (in flops_eval).
            **{k: total(k, evaluated) for k in ("memory_plan_trial_flops", "flops_bn_bank", "bn_bank_samples")
               if total(k, evaluated) is not None},
            "train_wall_s": total("wall_s"), "eval_wall_s": total("eval_wall_s", evaluated),
            "planning_wall_s": planning_s, "planning_energy_j": sum(planning_j) if planning_j else None,
            "energy_j": total("energy_j"), "eval_energy_j": total("eval_energy_j", evaluated),
            # The meter of the last record; a run of no epoch (statistics only) has its baseline's.
            "energy_source": (last or (baseline or {})).get("energy_source"),
            "energy_method": shared_method((last or (baseline or {})).get("energy_method"), shared_with),
            # The most other processes seen on the metered GPU in any window: its joules are then the
            # card's, not the run's own (absent where no meter counts them).
            **({"energy_shared_with": shared_with} if counted_sharing else {}),
            # All in: training (scoring, calibration, rolled-back steps and the planner's trials
            # included), every evaluation (the starting model, each epoch, the output model's test), and
            # the layout probe's FLOPs.
            "flops_all": (total("flops_train") or 0) + (total("flops_eval", evaluated) or 0) + probe_flops
            + (plan_flops or 0),
            "energy_all_j": None if train_j is None and eval_j is None else (train_j or 0) + (eval_j or 0),
            "eval_energy_share": None if not train_j or eval_j is None else eval_j / (train_j + eval_j),
            "wall_all_s": (total("wall_s") or 0) + (total("eval_wall_s", evaluated) or 0) + (plan_s or 0),
        },
        "totals_note": ("flops_all adds the layout probe's counted FLOPs; energy_all_j is the metered training "
                        "and evaluation windows (the probe, run before the meter's first window, is not in it)"),
        "flops_note": "counted with torch.utils.flop_counter for the passes actually run",
        "memory": memory_block(records, baseline, (extra.get("config") or {}).get("memory_budget_mb")),
        **({"baseline": {k: baseline.get(k) for k in ("val_acc", "test_acc", "flops_eval", "eval_energy_j")}}
           if baseline else {}),
        **({"kept": kept} if kept else {}),
        **({"reset": baseline["reset"]} if baseline and "reset" in baseline else {}),
    }


def shared_method(method: str | None, shared_with: int | None) -> str | None:
    """A run's method with "+shared" where any of its windows shared the GPU with others."""
    if not shared_with or method is None or method.endswith("+" + SHARED):
        return method
    return f"{method}+{SHARED}"


def flag_small_validation(out: dict, kept: dict | None, extra: dict) -> dict:
    """An output model decided by validation on fewer than MIN_SAMPLES images, where a few points are
    noise, says how many and what the run did: `could_not_tell` where it kept the trained model
    because the paired test could not resolve a difference, false where an earlier model was handed
    back because the last epoch was resolvably worse on them."""
    if not kept or kept.get("keep") != "best" or kept.get("rule") in ("last", "no_validation", "interrupted"):
        return out
    if kept.get("rule") != "unresolved" and kept.get("kept") == "best" and not kept.get("overruled"):
        return out          # the last epoch, best on validation: nothing was decided against it
    held = (extra.get("dataset") or {}).get("val_samples")
    subset = (extra.get("config") or {}).get("val_subset") or 0
    used = min(subset, held) if subset and held is not None else held
    if used is None or used >= MIN_SAMPLES:
        return out
    return {**out, "chosen_on_val_images": used, "could_not_tell": kept.get("rule") == "unresolved"}


def output_model(last: dict, kept: dict | None, records: list[dict] = (), baseline: dict | None = None) -> dict:
    """Which weights the run hands back and their accuracies (a pretrain's, and a --keep last
    run's, are the last epoch's); `anchor_acc` on the guard anchors when the run has them (promote's
    guard reads it); under a shift `clean_test_acc` on the server's clean test set."""
    out = _output_model(last, kept)
    if "clean_test_acc" not in last and "clean_test_acc" not in (baseline or {}):
        return out
    if out["weights"] == "warmup":
        clean = (baseline or {}).get("clean_test_acc")
    elif out["weights"] == "last":
        clean = last.get("clean_test_acc")
    else:       # measured at the end of the run when the kept epoch did not run the test set
        tested = [r.get("clean_test_acc") for r in records if r.get("epoch") == out["epoch"]]
        clean = (kept or {}).get("kept_clean_test_acc", tested[-1] if tested else None)
    return {**out, "clean_test_acc": clean}


def _output_model(last: dict, kept: dict | None) -> dict:
    if kept is None or kept.get("kept") == "last":
        out = {"weights": "last", "epoch": last.get("epoch"), "val_acc": last.get("val_acc"),
               "test_acc": last.get("test_acc")}
        anchor_acc = last.get("anchor_acc")
    else:
        out = {"weights": kept["kept"], "epoch": kept.get("kept_epoch"), "val_acc": kept.get("kept_val_acc"),
               "test_acc": kept.get("kept_test_acc")}
        anchor_acc = kept.get("kept_anchor_acc")
    return {**out, **({"anchor_acc": anchor_acc} if "anchor_acc" in last or anchor_acc is not None else {})}
