"""The device confirms where the server cannot speak for it (DESIGN §12; TinyTrain chooses on the
user's own data at about one backward pass). The server's recipes are a prior from its own images;
before a plain fine-tune takes their leader, the device asks two questions:

- are its images the server's kind? In one pass of the warmup over as many of its validation images as
  the server scored its figures on: their BatchNorm inputs against the warmup's running statistics
  (engine/loop/statistics_distance.py), a distance above the server's by more than both their sampling
  noises and by more than DIFFER_SHARE of it, or the warmup's accuracy on them below the server's by
  more than a two-proportion test tells apart, is a camera the server never saw;
- do the shipped figures tell the leader from the runner-up? A margin a paired test on the server's
  images cannot resolve is no ranking.

Where either says no, the leading shipped sets race on the device: each in both statistics modes
(frozen and re-estimated) at its shipped rate for that mode, trained on the device's images and scored
on its validation images (no step trains on them), all to the server's first mark (the fewest steps its
figures were scored at), all of it within RACE_SHARE of the run's estimated training joules. Where that
share buys the mark for only two racers, the two sets race in their shipped modes; where not even that,
there is no race: from a fresh head a step measures how fast a set starts, not where it ends (a 1-step
race on a noisy camera put bn+classifier 4.7 points ahead of full FT on 256 images, resolved by the
paired test, and so decided the run). The race's figures decide only where they resolve, and against
the server's at the same mark: its pick replaces the server's leader where a paired test says it beats
it (or is as good for fewer joules) and the device's margin differs from the server's at that mark by
more than their noise (where the device ranks them as the server did, the server's later marks speak
for the run); else the server's leader stays, and the line says which evidence decided."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import torch

from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.core.evidence import Z_ONE_SIDED, Z_TWO_SIDED, Allowance, as_good, paired, resolved, unpacked
from edge_sel.core.memory import StepShape
from edge_sel.engine.loop.set_gains import nearest_mark, recipe_at
from edge_sel.engine.loop.statistics_distance import distance_and_logits
from edge_sel.engine.loop.trial_gain import normalised, race, trial_images
from edge_sel.engine.machine import joule_plan
from edge_sel.engine.machine.joule_plan import OUTSIDE_BAND, Candidate

RACE_SHARE = 0.1          # of the run's estimated training joules, at most
RACE_SETS = 2             # the leading shipped sets that race, each in both statistics modes
RACE_HELD_OUT = 256       # validation images the racers are scored on, at most
# A device's statistics distance above the server's by more than their noise and by this share of it is
# a camera the server never saw. Lite0 at 96 px, 256 images a draw: clean draws within 3% of the server's
# (0.138-0.142 against 0.139, each +-0.001-0.002), Gaussian noise 3 at +30%, contrast 4 at +70%; the
# ratio of 2 that stood here told neither camera from the server's.
DIFFER_SHARE = 0.1
DISTANCE_IMAGES = 256     # validation images compared with the server's, at most (the server's count where fewer)


def question(trainer, candidates: list[Candidate], leader: Candidate, shipped: dict) -> tuple[str | None, dict]:
    """Why the device must confirm the server's leader (None: it need not), and what it measured: one
    pass of the warmup over as many of the device's validation images as the server scored its figures
    on (no step trains on them), for their distance from its statistics and its accuracy."""
    cfg, val = trainer.config, trainer.val_ds
    n = min(len(val), int(shipped.get("held_out") or DISTANCE_IMAGES), DISTANCE_IMAGES)
    facts = {"distance_images": n}
    if n < 2:
        return None, {**facts, "why_not": "no validation images to compare with the server's"}
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(cfg.seed))[:n].to(val.images.device)
    x, y = normalised(val, trainer.mean, trainer.std, pick)
    device, device_se, logits = distance_and_logits(trainer.model, x)
    right = int((logits.argmax(1) == y).sum())
    server, server_acc = shipped.get("bn_distance"), shipped.get("start_acc")
    server_se = shipped.get("bn_distance_se", device_se)    # a card from before the error: as noisy as the device's
    facts.update(device_bn_distance=device, device_bn_distance_se=device_se, server_bn_distance=server,
                 server_bn_distance_se=server_se, device_start_acc=round(right / n, 4), server_start_acc=server_acc)
    reasons = []
    if farther(device, device_se, server, server_se):
        facts["camera_differs"] = True
        reasons.append(f"its images are not the server's kind (BatchNorm distance {device:.3f} +-{device_se:.3f} "
                       f"against the server's {server:.3f} +-{server_se:.3f})")
    if server_acc is not None and below(right, n, server_acc, int(shipped["held_out"])):
        facts["camera_differs"] = True
        reasons.append(f"its images are not the server's kind (the warmup scores {right / n:.1%} on {n} of its "
                       f"validation images against {server_acc:.1%} on the server's)")
    rivals = [c for c in candidates if c is not leader and contends(c)]
    runner = max(rivals, key=lambda c: c.gain, default=None)
    if runner is not None and leader.correct is not None and not resolved(leader.correct, runner.correct):
        facts["runner_up"] = runner.name
        reasons.append(f"the shipped margin of {leader.name} over {runner.name} "
                       f"({(leader.gain - runner.gain) * 100:+.1f} points) is within its noise")
    return ("; ".join(reasons) or None), facts


def contends(c: Candidate) -> bool:
    """A shipped set that fits and has per-image figures: outside the band (not shown as good as the
    leader) it still contends until the figures resolve it behind."""
    return c.count is not None and c.correct is not None and (not c.out or c.out == OUTSIDE_BAND)


def farther(device: float | None, device_se: float | None, server: float | None, server_se: float | None) -> bool:
    """Whether the device's statistics distance lies above the server's by more than a one-sided 95% test
    of their difference tells apart, and by more than DIFFER_SHARE of the server's."""
    if device is None or server is None or device_se is None or server_se is None:
        return False
    return device - server > max(Z_ONE_SIDED * math.hypot(device_se, server_se), DIFFER_SHARE * server)


def below(right: int, n: int, server_acc: float, server_n: int) -> bool:
    """Whether `right` of `n` is below the server's accuracy by more than a two-sided 95% test of two
    proportions tells apart."""
    p = right / n
    se = math.sqrt(p * (1 - p) / n + server_acc * (1 - server_acc) / max(1, server_n))
    return server_acc - p > Z_TWO_SIDED * se if se > 0 else server_acc > p


def racers(trainer, candidates: list[Candidate], leader: Candidate, shipped: dict, run_images: int,
           user_mode: str | None, user_lr: float | None) -> list[Candidate]:
    """The leading shipped sets (the leader first, then those the shipped figures do not resolve behind
    it), each in the statistics modes the user left open, at its shipped rate for that mode."""
    i = nearest_mark(shipped, run_images)
    ranked = sorted((c for c in candidates if contends(c)),
                    key=lambda c: -c.gain)
    sets = [leader] + [c for c in ranked if c is not leader and not resolved(leader.correct, c.correct)]
    out = []
    for c in sets[:RACE_SETS]:
        for mode in ([user_mode] if user_mode else ["frozen", "train"]):
            recipe = recipe_at(shipped, c.name, i, mode, user_lr)
            if recipe is None:
                continue
            r = Candidate(c.name, set(c.trainable), lr=user_lr or recipe["lr"], count=c.count)
            r.shape = replace(c.shape, bn_statistics=mode)
            r.shipped = c           # the candidate it stands for
            out.append(r)
    return out


def affordable(entrants: list[Candidate], budget_s: float, scoring_s: float, steps: int) -> list[Candidate]:
    """The racers `budget_s` takes to `steps` steps, each scored once (`scoring_s`): every entrant, else
    the sets in the statistics modes their shipped figures lead in, else none."""
    shipped_modes = [r for r in entrants if r.shape.bn_statistics == r.shipped.shape.bn_statistics]
    for group in (entrants, shipped_modes):
        if len(group) >= 2 and steps * sum(r.step_s for r in group) + len(group) * scoring_s <= budget_s:
            return group
    return []


def run_race(trainer, entrants: list[Candidate], prior: Candidate, run_steps: int, shipped: dict, losses, flops,
             timed) -> dict:
    """The race to the server's first mark (in the device's batches; the run's steps where fewer) within
    RACE_SHARE of the prior's estimated training (joules where measured, else seconds); returns its
    figures, its pick, and whether it displaced the prior."""
    cfg = trainer.config
    first_mark = math.ceil(shipped["steps"][0] * shipped["rows"] / cfg.batch_size)
    timed(entrants)
    if len(entrants) < 2 or any(r.step_s is None for r in entrants):
        return {"raced": False, "why": "fewer than two racers could be timed"}
    held = min(RACE_HELD_OUT, len(trainer.val_ds))
    if held < 2:
        return {"raced": False, "why": "no validation images to score a race on"}
    budget_s = RACE_SHARE * (prior.seconds or sum(r.step_s for r in entrants) / len(entrants) * run_steps)
    scoring_s = min(r.step_s for r in entrants) * math.ceil(held / cfg.batch_size) / 3
    steps = max(1, min(first_mark, run_steps))
    entrants = affordable(entrants, budget_s, scoring_s, steps)
    if not entrants:
        return {"raced": False, "why": f"a tenth of the run ({budget_s:.1f} s) buys no two racers the {steps} steps "
                                       "of the server's first mark"}
    joules_share = None if prior.joules is None else RACE_SHARE * prior.joules
    allowance = Allowance.of_run(trainer, joules=joules_share, seconds=None if joules_share else budget_s)
    images = trial_images(trainer.train_ds, trainer.mean, trainer.std, cfg.batch_size, steps, cfg.seed, held,
                          trainer.val_ds)
    optimizer = partial(make_optimizer, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    allowance.begin()
    # Every racer to the same step (a few racers: halving them would compare a racer at half the steps).
    cost = race(trainer.model, entrants, images, optimizer, losses, cfg.batch_size, steps, flops, (), "cosine",
                allowance=allowance)
    said = {"raced": True, "cost": cost, "steps": steps, "held_out": held, "allowance_s": round(budget_s, 3),
            "racers": [{"name": r.name, "bn_statistics": r.shape.bn_statistics, "lr": r.lr,
                        "held_out_acc": r.trial.get("held_out_acc"), "reached": r.trial.get("reached"),
                        **({"dropped_at": r.trial["dropped_at"]} if "dropped_at" in r.trial else {})}
                       for r in entrants]}
    finished = [r for r in entrants if r.trial and r.trial.get("reached") == steps]
    if len(finished) < 2:
        return {**said, "decided": False, "why": "the race stopped before two racers finished"}
    for r in finished:
        r.seconds = r.step_s * run_steps
        r.joules = None if prior.joules is None or prior.seconds in (None, 0) else r.seconds * prior.joules / prior.seconds
    pick, _ = joule_plan.choose(finished)
    stands = next((r for r in entrants if r.shipped is prior and r.shape.bn_statistics == prior.shape.bn_statistics), None)
    decided = any(stands is r for r in finished) and pick is not stands and \
        displaces(pick, stands, server_at_mark(shipped, pick), server_at_mark(shipped, stands))
    return {**said, "decided": decided, "pick": pick, "stands_for_prior": stands}


def server_at_mark(shipped: dict, racer: Candidate) -> torch.Tensor | None:
    """The server's right/wrong on its scoring images for the racer's set, statistics and rate at its
    first mark (None where the card has no such figure)."""
    recipe = recipe_at(shipped, racer.name, 0, racer.shape.bn_statistics, racer.lr)
    if recipe is None or not recipe["correct"]:
        return None
    return unpacked(recipe["correct"], int(shipped["held_out"]))


def displaces(pick: Candidate, prior: Candidate, server_pick: torch.Tensor | None,
              server_prior: torch.Tensor | None) -> bool:
    """Whether the race's pick replaces the racer that stands for the server's leader: only where the
    race's own images put it ahead by a paired test, or as good (a deficit the test puts under half a
    point) for fewer joules, and rank the two unlike the server's images did at the same mark (the
    device's margin of the pick over the prior exceeds the server's there by more than both noises).
    Images that rank them as the server's did are the server's kind, and its later marks speak for the
    run: a set that starts fast need not end ahead (bn+classifier led full FT by 7.6 points after 16
    steps on a bench's server and trailed it by 1.2 after 128)."""
    if server_pick is None or server_prior is None:
        return False
    ahead = resolved(pick.correct, prior.correct) or (as_good(prior, pick) and cost_of(pick) < cost_of(prior))
    device, device_se = paired(pick.correct, prior.correct)
    server, server_se = paired(server_pick, server_prior)
    return ahead and device - server > Z_TWO_SIDED * math.hypot(device_se, server_se)


def cost_of(c: Candidate) -> float:
    return c.joules if c.joules is not None else (c.seconds if c.seconds is not None else math.inf)
