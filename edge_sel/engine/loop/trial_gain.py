"""The planner's expected gain from a short trial: each candidate that fits trains TRIAL_STEPS steps
from the run's start, in its own step shape (micro-batches, recomputed blocks) and BatchNorm statistics
mode, with the run's optimizer, on the run's images; then its accuracy on local images the trial did
not train on (evaluation mode, the statistics its steps left) is its expected gain. Its steps and its
held-out evaluation are counted by the run's FLOP counter (core/flops.py) as the run counts its own.

Why not the summed squared gradients alone: that sum only grows as a set grows, so everything always
ranked first, and it cannot see what training the statistics or early weights does. On Lite0 from its
ImageNet weights at 64 px (500 images, 2 epochs, lr 0.01) the sets ended at: the classifier 54.0%, biases
and norms 46.7%, everything re-estimating 36.7%, the classifier re-estimating 29.3%, everything frozen
10.7%; the squared gradients ranked them the other way round, and 16 trial steps ranked them
biases and norms 49.6, classifier 46.1, everything re-estimating 23.4, frozen 9.8 (Spearman 0.8 with the
finals; docs/memory-budget.md)."""

from __future__ import annotations

import math
import time

import torch

from edge_sel.backends.torch_backend import freeze_batchnorm_stats
from edge_sel.core.micro_batches import bounds
from edge_sel.core.lean_saves import set_saves
from edge_sel.data.augment import normalize
from edge_sel.engine.loop.schedule import lr_factor
from edge_sel.engine.machine.device import random_streams_kept

TRIAL_STEPS = 8          # steps each candidate trains for its trial
HELD_OUT = 128           # local images its accuracy is taken on (none of them trained on in the trial)
# What the trials may cost in all, as a share of the cheapest candidate's estimated training: the
# planner's aim is at most 1.2x the joules of the best fixed set that fits, planning included.
TRIAL_SHARE = 0.15


def trial_images(ds, mean, std, rows: int, steps: int, seed: int = 0, held_out: int = HELD_OUT):
    """(train x, train y, held-out x, held-out y), drawn by a seeded permutation (a run's images may
    be ordered by class): `held_out` images held out (a quarter where the run has fewer than twice
    that), the trial's steps cycling through the others."""
    n = len(ds)
    held = held_out_count(n, held_out)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(ds.images.device)
    held_pos, rest = order[:held], order[held:] if n > held else order
    train_pos = rest[torch.arange(rows * steps, device=order.device) % len(rest)]
    return (*normalised(ds, mean, std, train_pos), *normalised(ds, mean, std, held_pos))


def normalised(ds, mean, std, positions: torch.Tensor):
    """The run's images at `positions` as training sees them (before augmentation), and their labels."""
    device = ds.images.device
    return (normalize(ds.pixels(positions), torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device)),
            ds.labels[positions])


def run_trials(model, candidates, images, optimizer_factory, losses, rows: int, steps: int, flops,
               marks: tuple[int, ...] = (), schedule: str = "constant") -> dict:
    """Each candidate's trial (its `gain` set to the held-out accuracy, `trial` to the figures and the
    counted FLOPs of its steps and evaluation); the model's weights, statistics and flags as they were
    after. `flops`: the run's FlopCounter for `model`. `marks`: steps before `steps` at which the
    held-out images are scored too (the trial's `marks` entry, with each mark's right or wrong per
    image). `schedule`: each step's learning rate over the trial's steps, as a run's (engine/loop/schedule.py).
    Returns what the trials cost."""
    x, y, xh, yh = images
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    t0, trained, counted = time.perf_counter(), 0, 0
    scored_at = sorted({m for m in marks if 0 < m < steps} | {steps})
    with random_streams_kept(x.device):
        try:
            for c in candidates:
                with random_streams_kept(x.device):     # every candidate draws the same dropout masks
                    scores, images_trained, train_flops, eval_flops = trained_and_scored(
                        model, c, state, images, optimizer_factory, losses, rows, steps, flops, scored_at, schedule)
                trained += images_trained
                c.correct, loss = scores[-1][1], scores[-1][2]      # per image: the choice compares trials paired
                right = int(c.correct.sum())
                # A collapsed trial's loss is not finite: None keeps the plan's record strict JSON.
                c.trial = {"held_out_acc": round(right / len(yh), 4),
                           "held_out_loss": round(loss / len(yh), 4) if math.isfinite(loss) else None,
                           "flops_train": train_flops, "flops_eval": eval_flops}
                if len(scores) > 1:
                    c.trial["marks"] = [{"steps": k, "held_out_acc": round(int(ok.sum()) / len(yh), 4), "correct": ok}
                                        for k, ok, _ in scores]
                c.gain = right / len(yh)
                counted += train_flops + eval_flops
        finally:
            set_saves(model)
            model.zero_grad(set_to_none=True)
            model.load_state_dict(state)
            for n, p in params.items():
                p.requires_grad_(flags[n])
    return {"trial_steps": steps, "trial_images_trained": trained, "held_out_images": int(len(yh)),
            "trial_flops": counted, "trial_wall_s": round(time.perf_counter() - t0, 3)}


def trained_and_scored(model, c, state, images, optimizer_factory, losses, rows: int, steps: int, flops,
                       scored_at, schedule: str = "constant") -> tuple[list, int, int, int]:
    """`c`'s trial from `state`: its steps, scored on the held-out images at each of `scored_at`.
    Returns the scores (steps, right or wrong per image, summed loss), the images trained and the
    counted FLOPs of the steps and of the scoring."""
    x, y, xh, yh = images
    params = dict(model.named_parameters())
    model.load_state_dict(state)
    for n, p in params.items():
        p.requires_grad_(n in c.trainable)
    # A recipe's own learning rate where the candidate has one (engine/loop/set_gains.py), else the run's.
    optimizer = optimizer_factory([p for n, p in params.items() if n in c.trainable],
                                  **({} if getattr(c, "lr", None) is None else {"lr": c.lr}))
    train_flops, eval_flops, scores, trained = 0, 0, [], 0
    set_saves(model, c.shape.recompute, c.shape.lean)
    base = [group["lr"] for group in optimizer.param_groups]
    for k in range(steps):
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * lr_factor(schedule, k / steps)
        model.train()
        if c.shape.bn_statistics == "frozen":
            freeze_batchnorm_stats(model)
        xb, yb = x[k * rows:(k + 1) * rows], y[k * rows:(k + 1) * rows]
        optimizer.zero_grad(set_to_none=True)
        for lo, hi in bounds(len(yb), c.shape.chunk):      # each slice its share of the batch mean
            (losses(model(xb[lo:hi]), yb[lo:hi]).sum() / len(yb)).backward()
        optimizer.step()
        trained += len(yb)
        # The step as it ran: its set, micro-batches and recomputed blocks (the trainer's count).
        train_flops += sum(flops.train_step(len(yb), c.shape.chunk))
        if k + 1 in scored_at:
            set_saves(model)
            correct, loss, batch_flops = score(model, xh, yh, rows, losses, flops)
            scores.append((k + 1, correct, loss))
            eval_flops += batch_flops
            set_saves(model, c.shape.recompute, c.shape.lean)
    set_saves(model)
    return scores, trained, train_flops, eval_flops


def score(model, xh, yh, rows: int, losses, flops) -> tuple[torch.Tensor, float, int]:
    """Right or wrong per held-out image in evaluation mode, the summed loss and the counted FLOPs."""
    model.eval()
    correct, loss, counted = [], 0.0, 0
    with torch.no_grad():
        for lo, hi in bounds(len(yh), rows):
            out = model(xh[lo:hi]).float()
            correct.append((out.argmax(1) == yh[lo:hi]).cpu())
            loss += float(losses(out, yh[lo:hi]).sum())
            counted += flops.eval_batch(hi - lo)
    return torch.cat(correct), loss, counted


def fewest_steps_for_trials(steps: int, rows: int, held_out: int) -> int:
    """The fewest training steps a run needs before two trials can pay back (`affordable`): each trial
    costs at least `steps` and its held-out batches at the cheapest candidate's seconds a step, and
    the allowance is TRIAL_SHARE of that candidate's training. Below it no trial runs, whatever the
    timings, so nothing is spent on what only a trial would use."""
    return math.ceil(2 * (steps + math.ceil(held_out / max(1, rows))) / TRIAL_SHARE)


def held_out_count(n: int, wanted: int = HELD_OUT) -> int:
    """The held-out images of `trial_images` for a run of `n` images."""
    return min(wanted, max(1, n // 4)) if n < 2 * wanted else wanted


def affordable(candidates, steps: int, rows: int, held_out: int) -> tuple[list, dict]:
    """The candidates whose trials the run pays back, and how that was sized: cheapest first (timed
    seconds a step), as many as cost in all at most TRIAL_SHARE of the cheapest candidate's estimated
    training; none where fewer than two are (one trial chooses nothing). A trial's estimate: `steps` at
    the candidate's timed seconds a step (its own micro-batches and recomputation), and its held-out
    evaluation at the cheapest step's seconds a batch of `rows`."""
    timed = sorted((c for c in candidates if c.count is not None and c.step_s is not None), key=lambda c: c.step_s)
    if len(timed) < 2:
        return [], {"allowance_s": None, "estimated_s": 0.0, "tried": 0, "words": "fewer than two candidates timed"}
    allowance = TRIAL_SHARE * timed[0].seconds
    evaluation = timed[0].step_s * math.ceil(held_out / max(1, rows))
    chosen, spent = [], 0.0
    for c in timed:
        cost = steps * c.step_s + evaluation
        if spent + cost > allowance:
            break
        chosen.append(c)
        spent += cost
    if len(chosen) < 2:
        chosen, spent = [], 0.0
    first_two = 2 * (steps * timed[0].step_s + evaluation)
    words = (f"trials of the {len(chosen)} cheapest, estimated {spent:.1f} s" if chosen else
             f"two trials estimated {first_two:.1f} s against the {allowance:.1f} s allowed, "
             f"{TRIAL_SHARE:.0%} of the cheapest candidate's training")
    return chosen, {"allowance_s": round(allowance, 3), "estimated_s": round(spent, 3), "tried": len(chosen),
                    "share": TRIAL_SHARE, "words": words}
