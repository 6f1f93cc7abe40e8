"""What each set a device chooses among gains from a checkpoint's weights, measured by the server that
writes the checkpoint (`pretrain`, its recipes) and read by a device's own choice (default_choice.py)
and its memory planner (joule_choice.py) as their expected gains. MCUNetV3 chooses its sparse update
offline by contribution analysis: this is the same measurement for whole sets.

The server trains each set from the final weights at each recipe (learning rates x BatchNorm
statistics frozen or re-estimated), scores images of its validation split that no step trained on, and
ships per set, at each mark, the recipe chosen on one half of those images and its figure (right or
wrong per image, and a 95% interval) on the other half. It buys that evidence like compute
(core/evidence.py):

- successive halving: at each mark only the leading third of a set's recipes goes on (6 -> 2 -> 1);
- trials as long, in images, as the device runs they stand for (two epochs over the pretrain's own
  images), not 16-64 steps of its batch whatever its data (a 64-image server trained each recipe for
  some 30 passes over its images);
- the classifier's recipes with frozen statistics train on the classifier's input computed once
  (engine/loop/head_features.py);
- by default the search spends at most what the rest of the pretrain spent (its training, evaluation
  and anchors): it is sized to that before it starts, and stopped at it; a GPU server, where the grid
  is cheap, gets the whole grid; `--set-gains-steps N` buys N steps whatever they cost. A stop signal
  or `--energy-budget` stops it at once: what finished ships, marked partial.
- A server with fewer than MIN_HELD_OUT validation images cannot tell recipes apart: it ships none
  and says why (scored on images its epochs trained on, a digits warmup's sets all looked alike).

A device reads the mark nearest the images its run will train on; a set the server did not measure
(the device's gain-per-byte and sparse sets) cannot be chosen over one it did."""

from __future__ import annotations

import math
import time
from functools import partial

import torch

from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.core.evidence import Allowance, interval, packed, unpacked
from edge_sel.core.flops import FlopCounter
from edge_sel.core.memory import StepShape
from edge_sel.engine.loop.plan_sets import candidate_statistics, distinct, fixed_sets
from edge_sel.engine.loop.recipe_orders import ORDERS, averaged, more_orders, orders_figures
from edge_sel.engine.loop.statistics_distance import distance_and_logits
from edge_sel.engine.loop.trial_gain import race, trial_images
from edge_sel.engine.loop.val_size import training_only
from edge_sel.engine.machine.joule_plan import Candidate
from edge_sel.methods.update.lite_residual import residual_names
from edge_sel.models.lite_residual import add_residuals, remove_residuals

HELD_OUT = 1024          # validation images at most: half choose each set's recipe, half score it (+-3 points)
MIN_HELD_OUT = 100       # fewer: no recipes (50 images score a figure to about +-14 points)
# Each set's recipes: these learning rates (the run's optimizer, SGD with momentum by default), with the
# BatchNorm statistics frozen and re-estimated. An independent plain-PyTorch loop on Lite0 at 96 px,
# 2,000 images, 2 epochs: full fine-tuning re-estimating best at 0.01 (67.6%; 0.003: 55.4), frozen best
# at 0.003 (74.4%; at 0.01 it collapsed to 10.0%), the norms and the classifier at 0.01 (74.0%).
LR_GRID = (0.003, 0.01, 0.03)
MODES = ("frozen", "train")
# The trials' learning rate decays as a device run's does (a fine-tune's default schedule), over the
# trial's steps: at a constant rate the server measured full fine-tuning with frozen statistics at
# 57.8% after 128 steps and the norms and classifier at 70.3%; a device run of 125 steps reached 74.4
# and 73.3 (Lite0 from ImageNet at 96 px); with the decay the server measured 76.2 and 75.8 (78.5 at 0.01).
# The marks before the last are taken on the way, their rate not yet decayed.
TRIAL_SCHEDULE = "cosine"
LITE = "lite-residual+bias"
MIN_STEPS = 2            # a search sized to its allowance trains no recipe fewer steps than this
# The estimate's joules a FLOP against the pretrain's epochs' (a trial's steps run a few at a time and
# are scored often: digits, edgecnn, measured 1.0x-2.4x): sizing takes the pretrain's as they are, and
# the race stops on what its steps measure.
ESTIMATE_SLACK = 1.0
# Successive halving keeps a third of a set's recipes at each mark: the trained steps of 6 recipes to
# marks at 1/8, 1/4, 1/2 and all of the steps (6, 2, 1, 1 recipes in the four stretches).
HALVED_SHARE = (6 * 1 + 2 * 1 + 1 * 2 + 1 * 4) / 8 / 6


def steps_for(given: int, images: int, batch_size: int) -> int:
    """The steps each recipe trains: as given, or (-1) as many as two epochs over `images`."""
    if given > 0:
        return given
    return max(MIN_STEPS, math.ceil(2 * images / max(1, batch_size)))


def marks(steps: int) -> list[int]:
    """Where recipes are scored (and halved): 1/8, 1/4, 1/2 and all of `steps`."""
    return sorted({max(1, math.ceil(steps / d)) for d in (8, 4, 2)} | {steps})


def recipes(model, name: str, names) -> list[tuple[str, float]]:
    """The (statistics mode, learning rate) pairs a set is measured at: each rate of LR_GRID with the
    statistics frozen and re-estimated (lite residual branches: frozen, as TinyTL trains them)."""
    modes = [candidate_statistics(model, "train", False, names)[0]] if name == LITE else list(MODES)
    return [(mode, lr) for mode in modes for lr in LR_GRID]


def held_out(trainer, rows: int, steps: int):
    """(the trials' images, which held-out images choose, words) where the pretrain's validation split
    holds MIN_HELD_OUT images no step trained on; else (None, None, why)."""
    val = trainer.val_ds
    if len(val) < MIN_HELD_OUT:
        return None, None, (f"{len(val)} validation images, fewer than the {MIN_HELD_OUT} that choose each set's "
                            f"recipe on one half and score it on the other (--val-fraction holds out more)")
    n = min(HELD_OUT, len(val))
    images = trial_images(trainer.train_ds, trainer.mean, trainer.std, rows, steps, trainer.config.seed, n, val)
    select = torch.arange(n) < n // 2
    return images, select, (f"held out: {n} images of the pretrain's validation split, never trained on; each "
                            f"recipe chosen on {n // 2} of them and scored on the other {n - n // 2}")


def candidates_of(model, rows: int, named) -> list[Candidate]:
    out = []
    for name, names in named:
        for mode, lr in recipes(model, name, names):
            c = Candidate(name, set(names), lr=lr)
            c.shape = StepShape(rows, bn_statistics=mode)
            out.append(c)
    return out


def step_flops(trainer, names: set[str], rows: int) -> int:
    with training_only(trainer.model, names):
        return sum(trainer.flops.train_step(rows))


def sized_steps(trainer, named, steps: int, rows: int, held: int, allowance: Allowance,
                joules_per_flop: float | None) -> tuple[int, float | None]:
    """The most steps (at most `steps`, halved until it fits) whose halved grid is estimated within the
    allowance's joules, from each set's counted step and scoring at ESTIMATE_SLACK times the joules a
    FLOP the pretrain measured; (0, estimate) where not even the first mark of MIN_STEPS fits; `steps`
    where nothing bounds it. The race still stops at the allowance, rung by rung, on measured joules."""
    if allowance.joules is None or not joules_per_flop:
        return steps, None
    model = trainer.model
    per_step = sum(step_flops(trainer, names, rows) * len(recipes(model, name, names)) for name, names in named)
    full = {n for n, _ in model.named_parameters()}
    per_step += step_flops(trainer, full, rows) * len(recipes(model, LITE, full))      # the branches: as full FT
    scoring = trainer.flops.eval_batch(held) * (sum(len(recipes(model, n, s)) for n, s in named) + len(LR_GRID))
    rate = ESTIMATE_SLACK * joules_per_flop
    while True:
        estimate = rate * (per_step * steps * HALVED_SHARE + 2 * scoring)
        if estimate <= allowance.joules or steps <= MIN_STEPS:
            break
        steps = max(MIN_STEPS, steps // 2)
    first = rate * (per_step * marks(steps)[0] + scoring)
    return (steps if first <= allowance.joules else 0), estimate


def measure(trainer, steps: int, allowance: Allowance, halving: bool = True,
            joules_per_flop: float | None = None) -> dict:
    """Every fixed set's (and the lite residual branches') figures at each mark up to `steps`, from the
    trainer's model as it is now (the weights are left as they were), within `allowance`: the card's
    `set_gains`, or {"none": why} where nothing can be shipped; both with what the search cost."""
    cfg, model = trainer.config, trainer.model
    rows = cfg.batch_size
    named = [(name, names) for name, names in fixed_sets(model, None) if names is not None]
    sets_once = sorted(distinct(named), key=lambda s: step_flops(trainer, s[1], rows))      # cheapest first
    trainer.meter.begin("set-gains")
    t0, cost, lite_cost, found = time.perf_counter(), {}, {}, None
    try:
        allowance.begin()
        images, select, words = held_out(trainer, rows, steps)
        if images is not None:
            sized, estimate = sized_steps(trainer, sets_once, steps, rows, len(images.held_y), allowance,
                                          joules_per_flop)
            if not sized:
                words = (f"the first mark of the recipes was estimated over {allowance_words(allowance)} "
                         f"({estimate:,.0f} J for {MIN_STEPS} steps each)")
            else:
                found = search(trainer, sets_once, sized, images, select, rows, allowance, halving)
                cost, lite_cost = found.pop("cost"), found.pop("lite_cost")
                steps = sized
    finally:
        energy = trainer.meter.end("set-gains") or {}
    spent = {"flops": cost.get("trial_flops", 0) + lite_cost.get("trial_flops", 0),
             "trial_images_trained": cost.get("trial_images_trained", 0) + lite_cost.get("trial_images_trained", 0),
             "wall_s": round(time.perf_counter() - t0, 3), "energy_j": energy.get("energy_j"),
             "allowance": allowance_words(allowance)}
    if found is None or not found["sets"]:
        why = words if found is None else f"no set finished its first mark: stopped by {allowance.stopped}"
        return {"none": why, **spent}
    shipped = {"steps": found["steps"], "rows": rows, "optimizer": cfg.optimizer, "lr": cfg.lr,
               "lr_grid": list(LR_GRID), "schedule": f"{TRIAL_SCHEDULE} over {steps} steps",
               "held_out": found["held_out"], "chosen_on": int(select.sum()), "images": words,
               "halving": "a third of each set's recipes goes on at each mark" if halving else "none: the whole grid",
               "sets": found["sets"], "trials": found["trials"], "bn_distance": found["bn_distance"],
               "bn_distance_se": found["bn_distance_se"],
               "start_acc": found["start_acc"], "start_interval": found["start_interval"], "orders": found["orders"],
               **({"partial": f"stopped by {allowance.stopped}"} if allowance.stopped else {}),
               **({"bought": found["bought"]} if found.get("bought") else {}), **spent}
    return shipped


def planned_words(given: int, validation: int, distributed: bool) -> str | None:
    """A pretrain's first lines say what its recipes will cost, before it trains."""
    if given == 0 or (given < 0 and distributed):
        return None
    if validation < MIN_HELD_OUT:
        return (f"ships no recipes for devices: {validation} validation images, fewer than the {MIN_HELD_OUT} that "
                f"choose a recipe on one half and score it on the other (--val-fraction holds out more)")
    if given > 0:
        return f"after training, each set's recipes for devices over {given} steps (--set-gains-steps; 0: none)"
    return ("after training, each set's recipes for devices, costing at most what the rest of this pretrain "
            "spends (its training, evaluation and anchors; a GPU runs the whole grid; --set-gains-steps N buys "
            "N steps, 0 none)")


def allowance_words(allowance: Allowance) -> str:
    if allowance.joules is None:
        return "no allowance of joules (a stop signal or --energy-budget still stops it)"
    return f"an allowance of {allowance.joules:,.0f} J (what the rest of the pretrain spent)"


def search(trainer, sets_once, steps: int, images, select: torch.Tensor, rows: int, allowance: Allowance,
           halving: bool) -> dict:
    cfg, model = trainer.config, trainer.model
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    losses = trainer.objective.losses
    plain = candidates_of(model, rows, sets_once)
    groups = {id(c): c.name for c in plain} if halving else None
    at = marks(steps)[:-1]
    cost = race(model, plain, images, optimizer, losses, rows, steps, trainer.flops, at, TRIAL_SCHEDULE, groups,
                select, allowance)
    lite, lite_cost = [], {}
    # The branches race where the plain sets finished every mark and the allowance affords their first
    # at the dearest plain step's joules.
    dearest = max((c.trial.get("step_j", 0.0) for c in plain), default=0.0)
    if not allowance.stopped and "bought" not in cost and allowance.affords(
            len(LR_GRID) * marks(steps)[0] * dearest):
        add_residuals(model, trainer.flops.input_shape)
        try:        # the branches' steps counted on the model that has them
            lite = candidates_of(model, rows, [(LITE, residual_names(model))])
            lite_cost = race(model, lite, images, optimizer, losses, rows, steps,
                             FlopCounter(model, trainer.flops.input_shape), at, TRIAL_SCHEDULE,
                             {id(c): LITE for c in lite} if halving else None, select, allowance)
        finally:
            remove_residuals(model)
    scored = [m for m in marks(steps)]
    by_set: dict[frozenset, list] = {}
    for c in plain:
        by_set.setdefault(frozenset(c.trainable), []).append(c)
    every = [(name, by_set[frozenset(names)]) for name, names in
             [(n, s) for n, s in fixed_sets(model, None) if s is not None]] + ([(LITE, lite)] if lite else [])
    # Every shipped set at every shipped mark: the marks each set's leader reached (a set stopped before
    # its first is not shipped: it cannot be chosen).
    every = [(name, tried) for name, tried in every if max(c.trial.get("reached", 0) for c in tried)]
    reached = min((max(c.trial["reached"] for c in tried) for _, tried in every), default=0)
    shipped_marks = [m for m in scored if m <= reached]
    thick = []          # the contenders' chosen recipes again in further data orders (recipe_orders.py)
    if shipped_marks and shipped_marks[-1] == steps and not allowance.stopped and not cost.get("bought"):
        thick = more_orders(trainer, [tried for _, tried in every], images, select, steps, optimizer, losses, rows,
                            allowance, TRIAL_SCHEDULE, LITE, cost)
    sets = {}
    for name, tried in every if shipped_marks else []:
        reached_a_mark = [f for f in (recipe_figures(c, select, len(shipped_marks)) for c in tried) if f["acc"]]
        figures = best_at_each_mark(reached_a_mark, len(shipped_marks))
        sets[name] = {**figures, "tensors": len(tried[0].trainable),
                      **({"same_set_as": tried[0].name} if tried[0].name != name else {})}
    # The warmup itself on the same images, and their distance from its statistics (one pass): what a
    # device compares its own images with (engine/loop/device_race.py).
    distance, distance_se, logits = distance_and_logits(model, images.held_x)
    start = (logits.argmax(1) == images.held_y).cpu()[~select]
    cost["trial_flops"] += trainer.flops.eval_batch(len(images.held_y))
    return {"steps": shipped_marks, "held_out": int((~select).sum()), "sets": sets, "trials": len(plain) + len(lite),
            "bn_distance": distance, "bn_distance_se": distance_se, "start_acc": round(float(start.float().mean()), 4),
            "start_interval": interval(int(start.sum()), len(start)), "cost": cost, "lite_cost": lite_cost,
            "orders": {"count": ORDERS, "sets": thick},
            "bought": cost.get("bought") or lite_cost.get("bought")}


def recipe_figures(c: Candidate, select: torch.Tensor, marks_n: int) -> dict:
    """One recipe's figures at each of the first `marks_n` marks it reached (the marks every set
    reached: a stopped search ships no further): accuracy on the choosing half (`select_acc`) and on the
    scoring half (`acc`, its 95% `interval`, right or wrong per image packed in `correct`)."""
    marked = c.trial.get("marks") or ([{"steps": c.trial["reached"], "correct": c.correct}] if c.correct is not None else [])
    marked = marked[:marks_n]
    out = {"lr": c.lr, "bn_statistics": c.shape.bn_statistics, "acc": [], "select_acc": [], "interval": [],
           "correct": []}
    for m in marked:
        scoring = m["correct"][~select]
        out["acc"].append(round(float(scoring.float().mean()), 4))
        out["select_acc"].append(round(float(m["correct"][select].float().mean()), 4))
        out["interval"].append(interval(int(scoring.sum()), len(scoring)))
        out["correct"].append(packed(scoring))
    if "dropped_at" in c.trial:
        out["dropped_at"] = c.trial["dropped_at"]
    thick = orders_figures(c, select) if marked and len(marked) == marks_n else None
    if thick is not None:       # at the last mark: the recipe over its data orders
        out["orders"] = thick
    return out


def best_at_each_mark(tried: list[dict], marks_n: int) -> dict:
    """A set's figures as a device reads them: its recipes, and at each mark the recipe the choosing
    half ranks first among those that reached it (the lower learning rate on a tie), scored on the other
    half."""
    best = [max((r for r in tried if len(r["acc"]) > i), key=lambda r: (r["select_acc"][i], -r["lr"]))
            for i in range(marks_n)]
    return {"bn_statistics": best[-1]["bn_statistics"], "lr": best[-1]["lr"],
            "acc": [b["acc"][i] for i, b in enumerate(best)], "correct": [b["correct"][i] for i, b in enumerate(best)],
            "interval": [b["interval"][i] for i, b in enumerate(best)], "recipes": tried}


def nearest_mark(shipped: dict, images: int) -> int:
    """The index of the mark whose images trained (steps x the server's rows) are nearest, on a log
    scale, the `images` a run trains on."""
    seen = [s * shipped["rows"] for s in shipped["steps"]]
    return min(range(len(seen)), key=lambda i: abs(math.log(seen[i] / max(1, images))))


def on_grid(shipped: dict, lr: float | None) -> bool:
    """Whether a run's own learning rate is one the recipes were measured at."""
    grid = shipped.get("lr_grid") or [shipped.get("lr")]
    return lr is None or any(g is not None and math.isclose(g, lr) for g in grid)


def recipe_at(shipped: dict, name: str, i: int, mode: str | None = None, lr: float | None = None) -> dict | None:
    """The recipe of set `name` a device reads at mark `i` ({"lr", "bn_statistics", "acc", "correct",
    "interval", "steps"}): among its recipes in statistics `mode` and at learning rate `lr` where given (a
    run's own choices; a rate off the grid chooses among every rate), the one the choosing half ranks
    first at the furthest mark up to `i` that one of them reached; None where none fits. A card written
    before recipes has one per set: the pretrain's rate, the set's mode. The card's fields were checked
    when it was read (core/set_gains_card.py)."""
    measured = shipped["sets"][name]
    tried = measured.get("recipes") or [{"lr": shipped.get("lr"), "bn_statistics": measured.get("bn_statistics"),
                                         "acc": measured["acc"], "correct": measured["correct"]}]
    lr = lr if lr is not None and on_grid(shipped, lr) else None
    fitting = [r for r in tried if (mode is None or r["bn_statistics"] == mode)
               and (lr is None or r["lr"] is None or math.isclose(r["lr"], lr)) and r["acc"]]
    if not fitting:
        return None
    j = min(i, max(len(r["acc"]) for r in fitting) - 1)
    best = max((r for r in fitting if len(r["acc"]) > j),
               key=lambda r: ((r.get("select_acc") or r["acc"])[j], -(r["lr"] or 0)))
    # At the last mark a contender's figure is its recipe's over its data orders (recipe_orders.py).
    orders = best.get("orders") if j == len(best["acc"]) - 1 == len(shipped["steps"]) - 1 else None
    return {"lr": best["lr"], "bn_statistics": best["bn_statistics"],
            "acc": orders["mean"] if orders else best["acc"][j], "correct": best["correct"][j],
            "interval": orders["interval"] if orders else (best.get("interval") or [None] * (j + 1))[j],
            "steps": shipped["steps"][j], **({"orders_correct": orders["correct"]} if orders else {})}


def expected_gains(shipped: dict, candidates: list[Candidate], images: int, mode: str | None = None,
                   lr: float | None = None, own_modes: bool = False) -> dict | None:
    """Each candidate the server measured gets that measure as its expected gain (`gain`, `correct`,
    `trial`) at the mark nearest the run's `images`, and its best recipe there (`lr`; its statistics
    mode in `trial`) among those in the run's own statistics `mode` and at its own `lr` where it chose
    them (`own_modes`: each in its shape's mode, as a memory plan fitted it); one it did not measure is
    ruled out. None, and nothing changed, where fewer than two fitting candidates were measured (the
    device's own trials decide)."""
    i = nearest_mark(shipped, images)
    known = []
    for c in candidates:
        measured = shipped["sets"].get(c.name)
        if c.count is None or measured is None or measured["tensors"] != len(c.trainable):
            continue
        own = ("frozen" if c.shape.bn_statistics == "frozen" else "train") if own_modes and c.shape else mode
        recipe = recipe_at(shipped, c.name, i, own, lr)
        if recipe is not None:
            known.append((c, recipe))
    if len(known) < 2:
        return None
    for c, recipe in known:
        c.gain = float(recipe["acc"])
        c.correct = averaged(recipe, int(shipped["held_out"]))
        c.lr = recipe["lr"]
        c.trial = {"held_out_acc": c.gain, "server_steps": recipe["steps"], "bn_statistics": recipe["bn_statistics"],
                   "lr": recipe["lr"], **({"interval": recipe["interval"]} if recipe["interval"] else {})}
    chosen = {id(c) for c, _ in known}
    for c in candidates:
        if c.count is not None and id(c) not in chosen:
            c.out = "the server measured no gain for it"
    return {"steps": shipped["steps"][i], "rows": shipped["rows"], "images": shipped["steps"][i] * shipped["rows"],
            "run_images": images, "held_out": shipped["held_out"], "measured": len(known)}
