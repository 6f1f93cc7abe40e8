"""The start of a fine-tune: the starting checkpoint evaluated before any step (the bar the run
must clear), unless its classifier was never trained (chance by construction), and, under
--reset-forgetting, the choice to start from the source weights instead."""

from __future__ import annotations

from edge_sel.engine.levers.levers import forgot_too_much
from edge_sel.engine.loop import epoch_record
from edge_sel.engine.loop.bank_passes import holding, metered


def start_at_chance(trainer) -> bool:
    """Whether the run's start is at chance by construction and so is not evaluated: a fine-tune from a
    checkpoint whose classifier no epoch trained (made anew over published weights, or a random
    model's). Validating and testing it would decide and report nothing, so it is no keep-best
    candidate. Evaluated as before where the start is judged otherwise: a guard or a reset over the
    source's anchors, a condition bank's matching, a run of no epoch (which decides whether to keep
    re-estimated statistics). Lite0 from ImageNet at 96 px on 2,000 images: the start's validation and
    test pass were 302 of a default run's 2,487 J."""
    cfg = trainer.config
    return (trainer.untrained_head and trainer.phase == "finetune" and cfg.evaluate_start and cfg.epochs > 0
            and trainer.memory is None and cfg.reset_forgetting is None and trainer.bank is None)


def start_record(trainer) -> dict:
    """The start's record: evaluated (and reset to the source where it forgot too much), or, at chance
    (start_at_chance), its record with nothing evaluated and the reason."""
    if start_at_chance(trainer):
        chance = 1 / len(trainer.class_names)
        trainer.choice.start_at_chance = chance
        return {**epoch_record.baseline_fields(trainer.strategy.name, len(trainer.train_ds)),
                "val_acc": None, "test_acc": None, "evaluated": "none", "start_at_chance": chance,
                "flops_eval": 0, "eval_wall_s": 0.0, "eval_energy_j": 0.0}
    record = baseline_record(trainer)
    return record if trainer.config.reset_forgetting is None else reset_if_forgotten(trainer, record)


def baseline_record(trainer) -> dict:
    """The starting checkpoint on the local validation and test splits before any step: the bar
    a fine-tune must clear. It costs evaluation only (its FLOPs and joules are recorded)."""
    record = {**epoch_record.baseline_fields(trainer.strategy.name, len(trainer.train_ds)), **epoch_record.bn_fields(trainer)}
    source_cost = source_on_the_draw(trainer)
    trainer.log.evaluating_start(trainer.eval_sets, trainer.val_size_choice)
    record.update(trainer.evaluate(bar="start: evaluating"))
    if source_cost:         # the source's pass over the drawn guard anchors: evaluation cost of the start
        record.update(epoch_record.evaluation_cost(record, source_cost))
        record["source_guard_acc"] = trainer.eval_sets.source_anchor_acc
    record.update({k: trainer.last_eval_energy.get(k) for k in ("energy_source", "energy_method")})
    if trainer.config.epochs == 0:      # no epoch record will carry the plan's time and joules: this one does
        record.update(trainer.__dict__.pop("memory_plan_cost", None) or {})
        record.update(trainer.__dict__.pop("choice_cost", None) or {})
    if trainer.bank_setup:             # matching tonight's images to the bank: once, before any step
        setup, trainer.bank_setup = trainer.bank_setup, None
        record["flops_bn_bank"] = (record.get("flops_bn_bank") or 0) + setup["flops"]
        record["flops_eval"] = (record.get("flops_eval") or 0) + setup["flops"]
    return record


def source_on_the_draw(trainer) -> dict:
    """Where the run evaluates a draw of the guard anchors and the card has no per-anchor results
    to give the source's accuracy on it, one pass of the source weights over the draw (counted):
    the guard then compares like with like. Returns its evaluation cost ({} when not needed)."""
    drawn = trainer.guard_anchors
    if drawn is None or not drawn.measured_at_start or drawn.source_acc is not None:
        return {}
    acc, cost = measure_source(trainer)
    drawn.source_acc = trainer.eval_sets.source_anchor_acc = trainer.choice.source_anchor_acc = acc
    return cost


def source_guard_acc(trainer) -> tuple[float, dict]:
    """The source model's accuracy on the guard anchors the run evaluates: as the card states it (for
    a draw, its per-anchor results), as measured at the start, or measured here (counted)."""
    if trainer.eval_sets.source_anchor_acc is not None:
        return trainer.eval_sets.source_anchor_acc, {}
    return measure_source(trainer)


def measure_source(trainer) -> tuple[float, dict]:
    with holding(trainer.model, trainer.memory.source), metered(trainer) as took:
        out = trainer.eval_sets.anchor_accuracy(trainer.backend.predict)
    cost = {"flops_eval": out["flops_anchor"], "flops_anchor": out["flops_anchor"], "eval_wall_s": took["wall"],
            "eval_energy_j": took["energy"].get("energy_j"), "anchor_samples_evaluated": out["anchor_samples_evaluated"]}
    return out["anchor_acc"], cost


def reset_if_forgotten(trainer, baseline: dict) -> dict:
    """`--reset-forgetting P` (RDumb): the starting model's guard-anchor accuracy (measured by the
    baseline evaluation) more than P points below the source model's, and the run continues from
    the source weights instead; the baseline is then the source weights' evaluation, with the
    start's evaluation added to its cost. The run's start digest stays the deployed model's."""
    start_acc = baseline["anchor_acc"]
    source_acc, cost = source_guard_acc(trainer)
    reset = forgot_too_much(start_acc, source_acc, trainer.config.reset_forgetting)
    trainer.log.line(f"reset: the starting model's guard-anchor accuracy {start_acc:.3f}, the source's "
                     f"{source_acc:.3f} (allowed {trainer.config.reset_forgetting:g} points below): "
                     + ("reset to the source weights" if reset else "kept"))
    if reset:
        trainer.model.load_state_dict(trainer.memory.source)
        cost = epoch_record.evaluation_cost(baseline, cost)
        baseline = baseline_record(trainer)
    epoch_record.add_reset(baseline, {"start_guard_acc": start_acc, "source_guard_acc": source_acc,
                                      "reset": reset, "max_points": trainer.config.reset_forgetting}, cost)
    return baseline
