"""The plan's estimate of a whole run, not of its training alone. Lite0 at 128 px, one epoch on 1,000
images: evaluation was 76% of the joules and the plan did not see it. Besides each candidate's training,
the estimate holds:

- every evaluation pass the run's schedule makes: the starting model (validation and test), each
  validated epoch (with the guard anchors), the test set when it runs (with the clean test set under a
  shift), and a BatchNorm-adapted candidate's validation; counted in images and FLOPs, timed per image
  on this device by the plan's cost probe (a forward-only pass in the run's evaluation precision);
- planning itself so far: the layout and precision probes, the counts, the cost probe and the trials,
  as measured wall time at the probe's watts.

These are the same for every candidate: they do not change which wins, but an --energy-budget or
--time-budget is checked against training plus them, as the run's own budget stops it. Not in it: the
output model's own test (it runs only where the kept epoch is not the last) and a condition bank's
re-estimation passes (--bn-conditions), both charged to the run when they happen."""

from __future__ import annotations

import time

from edge_sel.engine.evaluation.evaluate import evaluation_flops
from edge_sel.engine.loop.start import start_at_chance
from edge_sel.engine.loop.val_size import validated_epochs


def evaluation_images(trainer) -> dict:
    """Images each evaluation pass of the run's schedule runs over, and how many passes of each."""
    cfg, sets = trainer.config, trainer.eval_sets
    validation = len(sets.val) + len(sets.anchors or ())
    test = len(sets.test) + len(sets.clean_test or ())
    start = int(trainer.phase == "finetune" and cfg.evaluate_start and not start_at_chance(trainer))
    if cfg.epochs:
        validated = validated_epochs(cfg, trainer.phase, getattr(trainer, "reads_validation", False))
        tested = validated if cfg.eval_test == "every" else 1
        # The re-estimated model, validated only as a keep-best candidate (engine/loop/trainer.py).
        candidate = int(bool(cfg.bn_adapt) and trainer.phase == "finetune" and trainer.choice.mode == "best")
    else:                       # --epochs 0: the start, and the adapted model where there is one
        validated = tested = int(bool(cfg.bn_adapt))
        candidate = 0
    validations, tests = start + validated + candidate, start + tested
    return {"validation_passes": validations, "images_per_validation": validation,
            "test_passes": tests, "images_per_test": test,
            "images": validations * validation + tests * test}


def planning_so_far_s(trainer) -> float:
    """Seconds spent choosing before the first step: the layout and precision probes, planning since
    it began (engine/loop/step_memory.py keeps when), a measuring child's included."""
    started = getattr(trainer, "planning_started", None)
    now = 0.0 if started is None else time.perf_counter() - started
    return now + (trainer.layout.probe_wall_s or 0.0) + (trainer.precision.probe_wall_s or 0.0)


def besides_training(trainer, eval_s_per_image: float | None, watts: float | None) -> dict:
    """The run's estimated evaluation and its planning so far, in images, FLOPs, seconds and joules
    (None where nothing was timed or no watts were measured)."""
    images = evaluation_images(trainer)
    flops = (images["validation_passes"] * evaluation_flops(trainer.flops, images["images_per_validation"],
                                                            trainer.eval_batch_size)
             + images["test_passes"] * evaluation_flops(trainer.flops, images["images_per_test"],
                                                        trainer.eval_batch_size))
    eval_s = None if eval_s_per_image is None else images["images"] * eval_s_per_image
    planning_s = planning_so_far_s(trainer)
    joules = (lambda s: None if s is None or watts is None else round(s * watts, 1))
    return {**images, "evaluation_flops": int(flops),
            "evaluation_s": None if eval_s is None else round(eval_s, 2), "evaluation_j": joules(eval_s),
            "planning_s": round(planning_s, 2), "planning_j": joules(planning_s),
            "rule": "evaluation: counted images x seconds per image timed by the cost probe x its watts; "
                    "planning: measured wall time so far x the same watts"}


def estimate_words(winner_j: float | None, besides: dict) -> str:
    """The plan line's estimate of the whole run."""
    parts = [besides.get("evaluation_j"), besides.get("planning_j")]
    if winner_j is None or None in parts:
        return "the run's joules not estimated (no watts measured)"
    total = winner_j + sum(parts)
    return (f"estimated run {total:,.0f} J: training {winner_j:,.0f}, evaluation {parts[0]:,.0f} "
            f"({besides['images']:,} images), planning so far {parts[1]:,.0f}")
