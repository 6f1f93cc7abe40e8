"""A recipe's figure over several data orders. One trial is one draw of the order its steps take the
images in: Lite0 from ImageNet at 96 px, 128 steps, full fine-tuning with frozen statistics at 0.003
scored 79.9% in the order the card shipped and 76.4 and 76.8 in two others on the same 512 images,
ahead of bn+classifier's one trial (78.7) within its noise; on five devices' seeds it then scored
56.2-77.0% where bn+classifier scored 72.6-78.2 (benchmarks/recipe_spread.py, the 2026-11-29 results
pages). So the sets a device would choose between at the last
mark (the leader and those the paired test cannot put behind it, at most CONTENDERS) train their chosen
recipe again in ORDERS - 1 more seeded orders, on the same held-out images, within the search's
allowance. Each image's right-or-wrong averaged over the orders is the figure a device reads
(`orders` on the recipe: its mean, interval and each order's bits); the marks before stay one trial's."""

from __future__ import annotations

import torch

from edge_sel.core.evidence import interval_of_mean, packed, resolved, unpacked
from edge_sel.core.flops import FlopCounter
from edge_sel.engine.loop.trial_gain import TrialImages, race
from edge_sel.models.lite_residual import add_residuals, remove_residuals

ORDERS = 3           # trials of a contender's chosen recipe: the shipped order and two more
CONTENDERS = 3       # sets at most trained again: the leader and the closest behind it


def chosen_at_last(tried: list, steps: int, select: torch.Tensor):
    """The set's recipe the choosing half ranks first among those that reached `steps` (the lower rate
    on a tie), or None."""
    done = [c for c in tried if c.trial.get("reached") == steps and c.correct is not None]
    if not done:
        return None
    return max(done, key=lambda c: (float(c.correct[select].float().mean()), -c.lr))


def contenders(chosen: list, select: torch.Tensor) -> list:
    """The leader on the scoring half and the sets its paired test cannot put behind it, closest first."""
    if not chosen:
        return []
    scoring = ~select

    def acc(c):
        return float(c.correct[scoring].float().mean())
    ranked = sorted(chosen, key=acc, reverse=True)
    leader = ranked[0]
    close = [c for c in ranked[1:] if not resolved(leader.correct[scoring], c.correct[scoring])]
    return [leader, *close][:CONTENDERS]


def train_orders(model, c, images: TrialImages, seed: int, optimizer, losses, rows: int, steps: int, flops,
                 schedule: str, allowance, cost: dict) -> bool:
    """`c`'s recipe again in each further order (`c.orders`: its right-or-wrong on every held-out image,
    the shipped order first), each order's cost added to `cost`; False where the allowance stopped one
    (its unfinished order is not kept)."""
    c.orders = [c.correct]
    for k in range(1, ORDERS):
        again = type(c)(c.name, set(c.trainable), lr=c.lr)
        again.shape = c.shape
        spent = race(model, [again], reordered(images, seed + k, rows, steps), optimizer, losses, rows, steps, flops,
                     (), schedule, allowance=allowance)
        cost["trial_flops"] = cost.get("trial_flops", 0) + spent["trial_flops"]
        cost["trial_images_trained"] = cost.get("trial_images_trained", 0) + spent["trial_images_trained"]
        if again.trial.get("reached") != steps or again.correct is None:
            return False
        c.orders.append(again.correct)
    return True


def reordered(images: TrialImages, seed: int, rows: int, steps: int) -> TrialImages:
    """The same training and held-out images, the steps taking the training images in another seeded
    order (as trial_images draws the first)."""
    order = torch.randperm(len(images.ds), generator=torch.Generator().manual_seed(seed)).to(images.train.device)
    train = order[torch.arange(rows * steps, device=order.device) % len(order)]
    return TrialImages(images.ds, images.mean, images.std, train, images.held_x, images.held_y)


def orders_figures(c, select: torch.Tensor) -> dict | None:
    """What a recipe ships of its orders: each order's figure and bits on the scoring half, their mean
    and its 95% interval (from each image's right-or-wrong averaged over the orders)."""
    orders = getattr(c, "orders", None)
    if not orders or len(orders) < 2:
        return None
    scoring = [o[~select] for o in orders]
    mean = torch.stack([o.float() for o in scoring]).mean(0)
    return {"acc": [round(float(o.float().mean()), 4) for o in scoring], "correct": [packed(o) for o in scoring],
            "mean": round(float(mean.mean()), 4), "interval": interval_of_mean(mean)}


def averaged(recipe: dict, held: int) -> torch.Tensor | None:
    """A device's right-or-wrong for a recipe it reads: each image's share of the orders right where the
    recipe ships orders at that mark, else its one trial's bits (None where it has none)."""
    if recipe.get("orders_correct"):
        return torch.stack([unpacked(bits, held).float() for bits in recipe["orders_correct"]]).mean(0)
    return unpacked(recipe["correct"], held) if recipe.get("correct") else None


def more_orders(trainer, groups: list[list], images: TrialImages, select: torch.Tensor, steps: int, optimizer, losses,
                rows: int, allowance, schedule: str, lite_name: str, cost: dict) -> list[str]:
    """The contenders among the sets' chosen recipes (`groups`: each distinct set's tried candidates)
    trained again in further orders, their cost added to the search's `cost`; returns their names. The
    lite residual branches (`lite_name`) train on the model that has them, counted there."""
    chosen = {id(c): c for c in (chosen_at_last(tried, steps, select) for tried in groups) if c is not None}
    names = []
    for c in contenders(list(chosen.values()), select):
        if allowance.stopped:
            break
        lite = c.name == lite_name
        if lite:
            add_residuals(trainer.model, trainer.flops.input_shape)
        try:
            flops = FlopCounter(trainer.model, trainer.flops.input_shape) if lite else trainer.flops
            whole = train_orders(trainer.model, c, images, trainer.config.seed, optimizer, losses, rows, steps, flops,
                                 schedule, allowance, cost)
        finally:
            if lite:
                remove_residuals(trainer.model)
        if not whole:
            c.orders = None
            break
        names.append(c.name)
    return names
