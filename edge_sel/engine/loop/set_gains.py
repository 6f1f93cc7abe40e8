"""What each set the planner chooses among gains from a checkpoint's weights, measured by the server
that writes the checkpoint (`pretrain --set-gains-steps N`) and read by a device's `--sparsity budget`
as its expected gains. MCUNetV3 chooses its sparse update offline by contribution analysis: this is
the same measurement for the planner's whole sets.

Why the server measures it: on the device, a run too short for two trials to pay back chose the
cheapest set, and an 8-step trial misranked the sets. Lite0 from ImageNet at 96 px, 126 steps: the
classifier led biases and norms 58.6% to 55.5% after 8 steps and ended 7 points behind them
(docs/memory-budget.md). The server has labelled images and time that a device has not: it trains each
set from the checkpoint's weights for N steps of its own training split, whole batches, in the
statistics mode the planner gives that set, and scores held-out images of the split at every power
of two steps on the way (each image's right or wrong kept, so a device compares two sets paired),
every set drawing the same dropout masks (one set under two names, trained once: Lite0 has no
convolution bias, so biases and norms are its norms; measured apart they differed by 6.3 points at 64
steps, the masks alone). A
device reads the mark nearest the images its run will train on; a set the server did not measure
(the device's gain-per-byte and sparse sets) cannot be chosen over one it did."""

from __future__ import annotations

import math
import time
from functools import partial

import numpy as np
import torch

from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.core.flops import FlopCounter
from edge_sel.core.memory import StepShape
from edge_sel.engine.loop.plan_sets import candidate_statistics, distinct, fixed_sets
from edge_sel.engine.loop.trial_gain import normalised, run_trials, trial_images
from edge_sel.engine.machine.joule_plan import Candidate
from edge_sel.methods.update.lite_residual import residual_names
from edge_sel.models.lite_residual import add_residuals, remove_residuals

HELD_OUT = 256           # held-out images of the server's split each mark scores
MIN_HELD_OUT = 50        # validation images that stand for them (fewer: the training split's)
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
FIRST_MARK = 8           # steps: then every power of two up to N, and N
LITE = "lite-residual+bias"


# --set-gains-steps auto (-1, the command line's default): the steps a device run of two epochs over
# as many images as the pretrain's own training split takes, as a power of two within these bounds.
AUTO_STEPS = (16, 64)


def steps_for(given: int, images: int, batch_size: int) -> int:
    """The steps each recipe trains: as given, or for `given` -1 sized as AUTO_STEPS says."""
    if given > 0:
        return given
    wanted = 2 * math.ceil(images / max(1, batch_size))
    return min(AUTO_STEPS[1], max(AUTO_STEPS[0], 1 << (wanted - 1).bit_length()))


def marks(steps: int) -> list[int]:
    out, mark = [], FIRST_MARK
    while mark < steps:
        out.append(mark)
        mark *= 2
    return out + [steps]


def server_images(trainer, rows: int, steps: int) -> tuple[tuple, str]:
    """The trials' training images (the pretrain's training split) and held-out images: up to HELD_OUT
    of its validation split where that holds MIN_HELD_OUT (images the pretrain never trained on: scored on images
    its epochs had fitted, every set of a digits warmup looked alike, 92-93%, and the classifier it then
    chose reached 77% on the device, where full fine-tuning reached 96%), else of the training split."""
    seed, train, val = trainer.config.seed, trainer.train_ds, trainer.val_ds
    if len(val) >= MIN_HELD_OUT:
        x, y, _, _ = trial_images(train, trainer.mean, trainer.std, rows, steps, seed, 0)
        held = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[:HELD_OUT]
        xh, yh = normalised(val, trainer.mean, trainer.std, held.to(val.images.device))
        return (x, y, xh, yh), "held out: the pretrain's validation split, never trained on; steps on its training split"
    return (trial_images(train, trainer.mean, trainer.std, rows, steps, seed, HELD_OUT),
            "the pretrain's training split: no set's steps trained on the held-out images (the pretrain's own "
            "epochs did, where it had any)")


def recipes(model, name: str, names) -> list[tuple[str, float]]:
    """The (statistics mode, learning rate) pairs a set is measured at: each rate of LR_GRID with the
    statistics frozen and re-estimated (lite residual branches: frozen, as TinyTL trains them)."""
    modes = [candidate_statistics(model, "train", False, names)[0]] if name == LITE else list(MODES)
    return [(mode, lr) for mode in modes for lr in LR_GRID]


def measure(trainer, steps: int) -> dict:
    """Every fixed set's (and the lite residual branches') held-out accuracy at each mark up to
    `steps`, at each of its recipes, from the trainer's model as it is now (a pretrain's final weights,
    which are left as they were), on its training split; the passes counted, timed and metered. The
    card's `set_gains`: per set its recipes, and at each mark the best recipe's figures."""
    cfg, model = trainer.config, trainer.model
    rows = cfg.batch_size
    images, held_from = server_images(trainer, rows, steps)
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    losses = trainer.objective.losses

    def candidates(name, names):
        out = []
        for mode, lr in recipes(model, name, names):
            c = Candidate(name, set(names), lr=lr)
            c.shape = StepShape(rows, bn_statistics=mode)
            out.append(c)
        return out

    trainer.meter.begin("set-gains")
    t0 = time.perf_counter()
    try:
        named = [(name, names) for name, names in fixed_sets(model, None) if names is not None]
        # A set two names share (no convolution bias: biases and norms are the norms) trains once.
        plain = [c for name, names in distinct(named) for c in candidates(name, names)]
        cost = run_trials(model, plain, images, optimizer, losses, rows, steps, trainer.flops, marks(steps)[:-1],
                          TRIAL_SCHEDULE)
        add_residuals(model, trainer.flops.input_shape)
        try:        # the branches' steps counted on the model that has them
            lite = candidates(LITE, residual_names(model))
            lite_cost = run_trials(model, lite, images, optimizer, losses, rows, steps,
                                   FlopCounter(model, trainer.flops.input_shape), marks(steps)[:-1], TRIAL_SCHEDULE)
        finally:
            remove_residuals(model)
    finally:
        energy = trainer.meter.end("set-gains") or {}
    measured: dict[frozenset, list] = {}
    for c in plain:
        measured.setdefault(frozenset(c.trainable), []).append(c)
    sets = {}
    for name, tried in [*((name, measured[frozenset(names)]) for name, names in named), (LITE, lite)]:
        sets[name] = {**best_at_each_mark([scored(c, steps) for c in tried]), "tensors": len(tried[0].trainable),
                      **({"same_set_as": tried[0].name} if tried[0].name != name else {})}
    return {"steps": marks(steps), "rows": rows, "optimizer": cfg.optimizer, "lr": cfg.lr, "lr_grid": list(LR_GRID),
            "schedule": f"{TRIAL_SCHEDULE} over {steps} steps",
            "held_out": cost["held_out_images"],
            "images": held_from,
            "sets": sets, "trials": len(plain) + len(lite), "flops": cost["trial_flops"] + lite_cost["trial_flops"],
            "wall_s": round(time.perf_counter() - t0, 3), "energy_j": energy.get("energy_j")}


def scored(c: Candidate, steps: int) -> dict:
    """One recipe's figures at each mark (held-out accuracy, right or wrong per image, packed)."""
    marked = c.trial.get("marks") or [{"steps": steps, "held_out_acc": c.trial["held_out_acc"], "correct": c.correct}]
    return {"lr": c.lr, "bn_statistics": c.shape.bn_statistics, "acc": [m["held_out_acc"] for m in marked],
            "correct": [packed(m["correct"]) for m in marked]}


def best_at_each_mark(tried: list[dict]) -> dict:
    """A set's figures as a device reads them: its recipes, and at each mark the best recipe's accuracy
    and right or wrong per image (the lower learning rate on a tie)."""
    marks_n = len(tried[0]["acc"])
    best = [max(tried, key=lambda r: (r["acc"][i], -r["lr"])) for i in range(marks_n)]
    return {"bn_statistics": best[-1]["bn_statistics"], "lr": best[-1]["lr"],
            "acc": [b["acc"][i] for i, b in enumerate(best)], "correct": [b["correct"][i] for i, b in enumerate(best)],
            "recipes": tried}


def packed(correct: torch.Tensor) -> str:
    return np.packbits(correct.numpy().astype(np.uint8)).tobytes().hex()


def unpacked(text: str, n: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool))


def nearest_mark(shipped: dict, images: int) -> int:
    """The index of the mark whose images trained (steps x the server's rows) are nearest, on a log
    scale, the `images` a run trains on."""
    seen = [s * shipped["rows"] for s in shipped["steps"]]
    return min(range(len(seen)), key=lambda i: abs(math.log(seen[i] / max(1, images))))


def recipe_at(shipped: dict, name: str, i: int, mode: str | None = None, lr: float | None = None) -> dict | None:
    """The best recipe of set `name` at mark `i` ({"lr", "bn_statistics", "acc", "correct"}), among those
    in statistics `mode` and at learning rate `lr` where given (a run's own choices) that reached mark `i`
    (a recipe dropped before it holds fewer figures); None where none is. A card written before recipes has
    one per set: the pretrain's rate, the set's mode. The card's fields were checked when it was read
    (core/set_gains_card.py)."""
    measured = shipped["sets"][name]
    tried = measured.get("recipes") or [{"lr": shipped.get("lr"), "bn_statistics": measured.get("bn_statistics"),
                                         "acc": measured["acc"], "correct": measured["correct"]}]
    fitting = [r for r in tried if (mode is None or r["bn_statistics"] == mode)
               and (lr is None or r["lr"] is None or math.isclose(r["lr"], lr)) and len(r["acc"]) > i]
    if not fitting:
        return None
    best = max(fitting, key=lambda r: (r["acc"][i], -(r["lr"] or 0)))
    return {"lr": best["lr"], "bn_statistics": best["bn_statistics"], "acc": best["acc"][i],
            "correct": best["correct"][i]}


def expected_gains(shipped: dict, candidates: list[Candidate], images: int, mode: str | None = None,
                   lr: float | None = None, own_modes: bool = False) -> dict | None:
    """Each candidate the server measured gets that measure as its expected gain (`gain`, `correct`,
    `trial`) at the mark nearest the run's `images`, and its best recipe there (`lr`; its statistics
    mode in `trial`) among those in the run's own statistics `mode` and at its own `lr` where it chose
    them (`own_modes`: each in its shape's mode, as a memory plan fitted it); one it did not measure is
    ruled out. None, and nothing changed, where fewer than two fitting
    candidates were measured (the device's own trials decide)."""
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
    steps = shipped["steps"][i]
    for c, recipe in known:
        c.gain = float(recipe["acc"])
        c.correct = unpacked(recipe["correct"], int(shipped["held_out"]))
        c.lr = recipe["lr"]
        c.trial = {"held_out_acc": c.gain, "server_steps": steps, "bn_statistics": recipe["bn_statistics"],
                   "lr": recipe["lr"]}
    chosen = {id(c) for c, _ in known}
    for c in candidates:
        if c.count is not None and id(c) not in chosen:
            c.out = "the server measured no gain for it"
    return {"steps": steps, "rows": shipped["rows"], "images": steps * shipped["rows"], "run_images": images,
            "held_out": shipped["held_out"], "measured": len(known)}
