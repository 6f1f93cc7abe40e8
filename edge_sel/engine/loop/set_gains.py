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
from edge_sel.engine.loop.trial_gain import run_trials, trial_images
from edge_sel.engine.machine.joule_plan import Candidate
from edge_sel.methods.update.lite_residual import residual_names
from edge_sel.models.lite_residual import add_residuals, remove_residuals

HELD_OUT = 256           # held-out images of the server's split each mark scores
FIRST_MARK = 8           # steps: then every power of two up to N, and N
LITE = "lite-residual+bias"


def marks(steps: int) -> list[int]:
    out, mark = [], FIRST_MARK
    while mark < steps:
        out.append(mark)
        mark *= 2
    return out + [steps]


def measure(trainer, steps: int) -> dict:
    """Every fixed set's (and the lite residual branches') held-out accuracy at each mark up to
    `steps`, from the trainer's model as it is now (a pretrain's final weights, which are left as they
    were), on its training split; the passes counted, timed and metered. The card's `set_gains`."""
    cfg, model = trainer.config, trainer.model
    rows = cfg.batch_size
    images = trial_images(trainer.train_ds, trainer.mean, trainer.std, rows, steps, cfg.seed, HELD_OUT)
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    losses = trainer.objective.losses

    def candidate(name, names):
        mode, _ = candidate_statistics(model, "train", False, names)
        c = Candidate(name, set(names))
        c.shape = StepShape(rows, bn_statistics=mode)
        return c

    trainer.meter.begin("set-gains")
    t0 = time.perf_counter()
    try:
        named = [(name, names) for name, names in fixed_sets(model, None) if names is not None]
        # A set two names share (no convolution bias: biases and norms are the norms) trains once.
        plain = [candidate(name, names) for name, names in distinct(named)]
        cost = run_trials(model, plain, images, optimizer, losses, rows, steps, trainer.flops, marks(steps)[:-1])
        add_residuals(model, trainer.flops.input_shape)
        try:        # the branches' steps counted on the model that has them
            lite = candidate(LITE, residual_names(model))
            lite_cost = run_trials(model, [lite], images, optimizer, losses, rows, steps,
                                   FlopCounter(model, trainer.flops.input_shape), marks(steps)[:-1])
        finally:
            remove_residuals(model)
    finally:
        energy = trainer.meter.end("set-gains") or {}
    measured = {frozenset(c.trainable): c for c in plain}
    sets = {}
    for name, c in [*((name, measured[frozenset(names)]) for name, names in named), (LITE, lite)]:
        scored = c.trial.get("marks") or [{"steps": steps, "held_out_acc": c.trial["held_out_acc"], "correct": c.correct}]
        sets[name] = {"tensors": len(c.trainable), "bn_statistics": c.shape.bn_statistics,
                      "acc": [m["held_out_acc"] for m in scored], "correct": [packed(m["correct"]) for m in scored],
                      **({"same_set_as": c.name} if c.name != name else {})}
    return {"steps": marks(steps), "rows": rows, "optimizer": cfg.optimizer, "lr": cfg.lr,
            "held_out": cost["held_out_images"],
            "images": "the pretrain's training split: no set's steps trained on the held-out images (the "
                      "pretrain's own epochs did, where it had any)",
            "sets": sets, "flops": cost["trial_flops"] + lite_cost["trial_flops"],
            "wall_s": round(time.perf_counter() - t0, 3), "energy_j": energy.get("energy_j")}


def packed(correct: torch.Tensor) -> str:
    return np.packbits(correct.numpy().astype(np.uint8)).tobytes().hex()


def unpacked(text: str, n: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool))


def nearest_mark(shipped: dict, images: int) -> int:
    """The index of the mark whose images trained (steps x the server's rows) are nearest, on a log
    scale, the `images` a run trains on."""
    seen = [s * shipped["rows"] for s in shipped["steps"]]
    return min(range(len(seen)), key=lambda i: abs(math.log(seen[i] / max(1, images))))


def expected_gains(shipped: dict, candidates: list[Candidate], images: int) -> dict | None:
    """Each candidate the server measured gets that measure as its expected gain (`gain`, `correct`,
    `trial`), at the mark nearest the run's `images`; one it did not is ruled out. None, and nothing
    changed, where fewer than two fitting candidates were measured (the device's own trials decide)."""
    known = [c for c in candidates if c.count is not None and c.name in shipped["sets"]
             and shipped["sets"][c.name]["tensors"] == len(c.trainable)]
    if len(known) < 2:
        return None
    i = nearest_mark(shipped, images)
    steps = shipped["steps"][i]
    for c in known:
        measured = shipped["sets"][c.name]
        c.gain = float(measured["acc"][i])
        c.correct = unpacked(measured["correct"][i], int(shipped["held_out"]))
        c.trial = {"held_out_acc": c.gain, "server_steps": steps, "bn_statistics": measured["bn_statistics"]}
    for c in candidates:
        if c.count is not None and c not in known:
            c.out = "the server measured no gain for it"
    return {"steps": steps, "rows": shipped["rows"], "images": steps * shipped["rows"], "run_images": images,
            "held_out": shipped["held_out"], "measured": len(known)}
