"""Trials: each candidate (a trainable set in its step shape, BatchNorm statistics mode and learning
rate) trains a few steps from the run's start with the run's optimizer, on the run's images; its
accuracy on images no step of it trained on is its expected gain. The server's recipes
(set_gains.py), the device's trials (default_choice.py, joule_choice.py) and the device's race of the
shipped leaders all run here, in rungs: after each rung only the leading share of each group goes on
(successive halving, core/evidence.py), within what the search's Allowance lets it spend.
Steps and scoring are counted by the run's FLOP counter (core/flops.py) as the run counts its own.

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
from dataclasses import dataclass

import torch

from edge_sel.backends.torch_backend import freeze_batchnorm_stats
from edge_sel.core.evidence import Allowance, Stopped, keep_leaders
from edge_sel.core.micro_batches import bounds
from edge_sel.core.lean_saves import set_saves
from edge_sel.data.augment import normalize
from edge_sel.engine.loop.head_features import HeadFeatures
from edge_sel.engine.loop.schedule import lr_factor
from edge_sel.engine.machine.device import random_streams_kept

TRIAL_STEPS = 8          # steps each candidate trains for its trial
HELD_OUT = 128           # local images its accuracy is taken on (none of them trained on in the trial)
# What the trials may cost in all, as a share of the cheapest candidate's estimated training: the
# planner's aim is at most 1.2x the joules of the best fixed set that fits, planning included.
TRIAL_SHARE = 0.15


@dataclass
class TrialImages:
    """What trials train and score on: `train` positions of `ds` (a step's rows normalised when it
    runs: materialising every step's images held 3.4 GB for a grid of Lite0 trials at 96 px) and the
    held-out images, normalised once."""
    ds: object
    mean: list
    std: list
    train: torch.Tensor
    held_x: torch.Tensor
    held_y: torch.Tensor
    given: tuple | None = None        # (x, y) already normalised, in place of `ds` (of_tensors)

    @classmethod
    def of_tensors(cls, x, y, held_x, held_y) -> "TrialImages":
        """Images given as normalised tensors, the steps taking them in order."""
        return cls(None, [], [], torch.arange(len(y)), held_x, held_y, (x, y))

    def batch(self, k: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.at(self.train[k * rows:(k + 1) * rows])

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.given is not None:
            return self.given[0][positions], self.given[1][positions]
        return normalised(self.ds, self.mean, self.std, positions)

    def labels(self, positions: torch.Tensor) -> torch.Tensor:
        return self.given[1][positions] if self.given is not None else self.ds.labels[positions]


def trial_images(ds, mean, std, rows: int, steps: int, seed: int = 0, held_out: int = HELD_OUT,
                 held_ds=None) -> TrialImages:
    """The images of a trial, drawn by a seeded permutation (a run's images may be ordered by class):
    `held_out` images held out of `ds` (a quarter where it has fewer than twice that) and the steps
    cycling through the others; or, with `held_ds`, all of `ds` to train and `held_out` of `held_ds`."""
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).to(ds.images.device)
    if held_ds is None:
        held = held_out_count(len(ds), held_out)
        held_pos, rest = order[:held], order[held:] if len(ds) > held else order
        held_x, held_y = normalised(ds, mean, std, held_pos)
    else:
        rest = order
        pick = torch.randperm(len(held_ds), generator=torch.Generator().manual_seed(seed))[:held_out]
        held_x, held_y = normalised(held_ds, mean, std, pick.to(held_ds.images.device))
    train = rest[torch.arange(rows * steps, device=order.device) % len(rest)]
    return TrialImages(ds, mean, std, train, held_x, held_y)


def normalised(ds, mean, std, positions: torch.Tensor):
    """The run's images at `positions` as training sees them (before augmentation), and their labels."""
    device = ds.images.device
    return (normalize(ds.pixels(positions), torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device)),
            ds.labels[positions])


class Trial:
    """One candidate's trial, resumable at any step: what its steps move (its trainable tensors, the
    statistics, its optimizer's state) is kept between rungs; the rest of the model is the start's."""

    def __init__(self, c, optimizer_factory, steps: int, schedule: str):
        self.c, self.steps, self.schedule, self.done = c, steps, schedule, 0
        self.optimizer_factory = optimizer_factory
        self.optimizer, self.moved, self.scores = None, None, []
        self.images_trained = self.train_flops = self.eval_flops = 0
        self.step_j = self.step_s = 0.0         # what its steps so far cost (an allowance's meter), per step

    def load(self, model, start: dict) -> None:
        model.load_state_dict(start)
        if self.moved is not None:
            model.load_state_dict(self.moved, strict=False)
        for n, p in model.named_parameters():
            p.requires_grad_(n in self.c.trainable)

    def advance(self, model, start: dict, images: TrialImages, losses, rows: int, to: int, flops,
                features: HeadFeatures | None, allowance: Allowance | None, guess_j: float = 0.0) -> bool:
        """Steps from where it stopped up to `to`; False where the allowance stopped it first (what it
        trained is kept, its steps so far counted). Each step runs only where the allowance has room for
        one more at the last step's joules (`guess_j` before its first: the dearest trial step so far)."""
        self.load(model, start)
        params = dict(model.named_parameters())
        if self.optimizer is None:      # a recipe's own learning rate where it has one, else the run's
            self.optimizer = self.optimizer_factory([p for n, p in params.items() if n in self.c.trainable],
                                                    **({} if self.c.lr is None else {"lr": self.c.lr}))
            self.base_lr = [group["lr"] for group in self.optimizer.param_groups]
        shape = self.c.shape
        cached = features is not None and features.serves(self.c)
        set_saves(model, shape.recompute, shape.lean)
        step_j = self.step_j or guess_j
        try:
            while self.done < to:
                if allowance is not None and allowance.spend_check(step_j):
                    return False
                spent0, t_step = None if allowance is None else allowance.spent()[0], time.perf_counter()
                for group, lr in zip(self.optimizer.param_groups, self.base_lr):
                    group["lr"] = lr * lr_factor(self.schedule, self.done / self.steps)
                model.train()
                if shape.bn_statistics == "frozen":
                    freeze_batchnorm_stats(model)
                if cached:
                    self.train_flops += features.step(model, images, self.done, rows, self.optimizer, losses)
                else:
                    xb, yb = images.batch(self.done, rows)
                    self.optimizer.zero_grad(set_to_none=True)
                    for lo, hi in bounds(len(yb), shape.chunk):      # each slice its share of the batch mean
                        (losses(model(xb[lo:hi]), yb[lo:hi]).sum() / len(yb)).backward()
                    self.optimizer.step()
                    # The step as it ran: its set, micro-batches and recomputed blocks (the trainer's count).
                    self.train_flops += sum(flops.train_step(len(yb), shape.chunk))
                self.images_trained += min(rows, len(images.train) - self.done * rows)
                self.done += 1
                if allowance is not None:
                    step_j = allowance.spent()[0] - spent0
                    self.step_j += (step_j - self.step_j) / self.done
                self.step_s += (time.perf_counter() - t_step - self.step_s) / self.done
        finally:
            set_saves(model)
            moving = self.c.trainable | {n for n, _ in model.named_buffers()}
            self.moved = {k: v.detach().clone() for k, v in model.state_dict().items() if k in moving}
        return True

    def score(self, model, images: TrialImages, losses, rows: int, flops, features: HeadFeatures | None) -> None:
        """Right or wrong per held-out image at the steps done (evaluation mode, the statistics the
        steps left), kept in `scores`."""
        if features is not None and features.serves(self.c):
            correct, loss, counted = features.score(model, images, losses)
        else:
            correct, loss, counted = score(model, images.held_x, images.held_y, rows, losses, flops)
        self.eval_flops += counted
        self.scores.append((self.done, correct, loss))


def race(model, candidates, images: TrialImages, optimizer_factory, losses, rows: int, steps: int, flops,
         rungs: tuple[int, ...] = (), schedule: str = "constant", groups: dict | None = None,
         select: torch.Tensor | None = None, allowance: Allowance | None = None) -> dict:
    """Each candidate's trial towards `steps`, scored on the held-out images at every rung (and at
    `steps`). With `groups` ({candidate: group}), after each rung but the last only the leading share of
    each group goes on (ranked on the held-out images `select` marks; all where None). An `allowance`
    stops the race where it says: a candidate's figures are those of the last rung it finished.
    Sets each candidate's `trial` (its figures at every rung it reached), `correct` and `gain` (at the
    last), and returns what the race cost; the model's weights, statistics and flags as they were after."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    scored_at = sorted({m for m in rungs if 0 < m < steps} | {steps})
    trials = {id(c): Trial(c, optimizer_factory, steps, schedule) for c in candidates}
    features = HeadFeatures.for_candidates(model, candidates, images, flops, allowance)
    alive = list(candidates)
    t0, stopped, bought, scoring_j, scoring_s = time.perf_counter(), None, None, [], []
    with random_streams_kept(images.held_x.device):
        try:
            for rung, mark in enumerate(scored_at):
                # A rung after the first runs only where the allowance affords it whole, at the joules a
                # step each racer's steps so far cost and the scoring's so far: else what was scored stands.
                more = [(mark - trials[id(c)].done, trials[id(c)]) for c in alive]
                if rung and allowance is not None and not allowance.affords(
                        sum(n * t.step_j for n, t in more) + len(alive) * max(scoring_j, default=0.0),
                        sum(n * t.step_s for n, t in more) + len(alive) * max(scoring_s, default=0.0)):
                    bought = f"{allowance.limit_words()} bought marks up to step {scored_at[rung - 1]} of {steps}"
                    break
                finished = []
                for c in alive:
                    # Every candidate draws the same dropout masks at a rung (and the same as the trial
                    # of one that was not halved away).
                    torch.manual_seed(1_000_003 * (rung + 1))
                    try:
                        went = trials[id(c)].advance(model, start, images, losses, rows, mark, flops, features,
                                                     allowance, max((t.step_j for t in trials.values()), default=0.0))
                    except Stopped:         # a feature pass the allowance stopped (engine/loop/head_features.py)
                        went = False
                    if not went:
                        stopped = allowance.stopped
                        break
                    if allowance is not None and allowance.spend_check(max(scoring_j, default=0.0)):
                        stopped = allowance.stopped
                        break
                    before = None if allowance is None else allowance.spent()
                    trials[id(c)].score(model, images, losses, rows, flops, features)
                    if allowance is not None:
                        after = allowance.spent()
                        scoring_j.append(after[0] - before[0])
                        scoring_s.append(after[1] - before[1])
                    finished.append(c)
                if stopped:
                    break
                alive = finished
                if groups is not None and mark != scored_at[-1]:
                    alive = leaders(alive, trials, groups, select)
        finally:
            set_saves(model)
            model.zero_grad(set_to_none=True)
            model.load_state_dict(start)
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
    for c in candidates:
        figures(c, trials[id(c)], len(images.held_y), steps, alive if groups is not None else None)
    every = trials.values()
    return {"trial_steps": steps, "trial_images_trained": sum(t.images_trained for t in every),
            "held_out_images": int(len(images.held_y)),
            "trial_flops": sum(t.train_flops + t.eval_flops for t in every),
            "trial_wall_s": round(time.perf_counter() - t0, 3), "rungs": scored_at,
            **({"stopped": stopped} if stopped else {}), **({"bought": bought} if bought else {}),
            **({"head_features": features.describe()} if features is not None else {})}


def leaders(alive, trials, groups: dict, select: torch.Tensor | None) -> list:
    """The candidates that go on: the leading share of each group, by accuracy on the `select` images
    at the rung just scored (the lower loss on a tie)."""
    by_group: dict = {}
    for c in alive:
        _, correct, loss = trials[id(c)].scores[-1]
        picked = correct if select is None else correct[select]
        by_group.setdefault(groups[id(c)], {})[id(c)] = (int(picked.sum()), -loss)
    kept = set().union(*(keep_leaders(scores) for scores in by_group.values()))
    return [c for c in alive if id(c) in kept]


def figures(c, trial: Trial, held: int, steps: int, final: list | None) -> None:
    c.trial = {"flops_train": trial.train_flops, "flops_eval": trial.eval_flops,
               "step_j": round(trial.step_j, 4), "step_s": round(trial.step_s, 4)}
    if not trial.scores:
        c.gain, c.correct = 0.0, None
        c.trial["reached"] = 0
        return
    done, correct, loss = trial.scores[-1]
    c.correct, c.gain = correct, int(correct.sum()) / held
    # A collapsed trial's loss is not finite: None keeps the plan's record strict JSON.
    c.trial.update(held_out_acc=round(c.gain, 4), held_out_loss=round(loss / held, 4) if math.isfinite(loss) else None,
                   reached=done)
    if final is not None and done < steps and all(c is not f for f in final):
        c.trial["dropped_at"] = done
    if len(trial.scores) > 1 or done < steps:
        c.trial["marks"] = [{"steps": k, "held_out_acc": round(int(ok.sum()) / held, 4), "correct": ok}
                            for k, ok, _ in trial.scores]


def run_trials(model, candidates, images: TrialImages, optimizer_factory, losses, rows: int, steps: int, flops,
               marks: tuple[int, ...] = (), schedule: str = "constant", allowance: Allowance | None = None) -> dict:
    """Every candidate's trial to the end (no halving), scored at `marks` on the way: a race of one rung
    group each."""
    return race(model, candidates, images, optimizer_factory, losses, rows, steps, flops, marks, schedule,
                allowance=allowance)


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


def affordable(candidates, steps: int, rows: int, held_out: int, share: float | None = None) -> tuple[list, dict]:
    """The candidates whose trials the run pays back, and how that was sized: cheapest first (timed
    seconds a step), as many as cost in all at most `share` of the cheapest candidate's estimated
    training; none where fewer than two are (one trial chooses nothing). A trial's estimate: `steps` at
    the candidate's timed seconds a step (its own micro-batches and recomputation), and its held-out
    evaluation at the cheapest step's seconds a batch of `rows`."""
    share = TRIAL_SHARE if share is None else share
    timed = sorted((c for c in candidates if c.count is not None and c.step_s is not None), key=lambda c: c.step_s)
    if len(timed) < 2:
        return [], {"allowance_s": None, "estimated_s": 0.0, "tried": 0, "words": "fewer than two candidates timed"}
    allowance = share * timed[0].seconds
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
             f"{share:.0%} of the cheapest candidate's training")
    return chosen, {"allowance_s": round(allowance, 3), "estimated_s": round(spent, 3), "tried": len(chosen),
                    "share": share, "words": words}
