"""The checks a received card's `set_gains` (engine/loop/set_gains.py) passes before a device reads it:
every field a reader uses, each recipe's included, with the type and range the reader relies on.

A card is data from elsewhere: recipes without their learning rates stopped a run with a TypeError, an
empty accuracy list with an IndexError. Each problem is said as the field's path and what it must be
("set_gains.sets['full FT'].recipes[2].lr must be a finite number above 0, got None"), which the card's
reader refuses in one line. Fields a newer writer adds (`partial`, `measured_on`, per recipe `interval`,
`select_acc`, `dropped_at`) are accepted where their types are sane and never required; a recipe dropped
before the last mark (`dropped_at`, or stopped by the search's allowance) holds figures for the marks it
reached only."""

from __future__ import annotations

import math

MODES = ("frozen", "train")         # the statistics modes a set's recipes are measured in (set_gains.MODES)
WORDS = ("optimizer", "schedule", "images", "measured_on", "halving", "bought", "allowance")  # said, never computed with


class Bad(Exception):
    """A field that fails its check; the message names it and what it must be."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value, lo: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _require(ok: bool, where: str, what: str, value) -> None:
    if not ok:
        shown = repr(value)
        raise Bad(f"{where} must be {what}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")


def _rate(value, where: str, optional: bool) -> None:
    _require((optional and value is None) or (_number(value) and value > 0), where,
             "a finite number above 0" + (" or null" if optional else ""), value)


def _shares(values, where: str, n: int | None, most: int | None = None) -> None:
    """A list of accuracies (finite, 0 to 1): `n` of them, or 1 to `most`."""
    _require(isinstance(values, list) and (len(values) == n if n is not None else 1 <= len(values) <= most), where,
             f"a list of {n} accuracies" if n is not None else f"a list of 1 to {most} accuracies", values)
    for j, a in enumerate(values):
        _require(_number(a) and 0 <= a <= 1, f"{where}[{j}]", "a finite number from 0 to 1", a)


def _figures(d: dict, where: str, held: int, marks: int, whole: bool) -> None:
    """A set's or a recipe's figures at each mark: `acc`, `correct` (right or wrong per held-out image,
    packed as hex) and the optional `select_acc` and `interval`; all `marks` of them where `whole`, else at
    most that many."""
    acc = d.get("acc")
    _shares(acc, f"{where}.acc", marks if whole else None, marks)
    n = len(acc)
    correct = d.get("correct")
    _require(isinstance(correct, list) and len(correct) == n, f"{where}.correct", f"a list of {n} packed answers",
             correct)
    for j, c in enumerate(correct):
        try:
            ok = isinstance(c, str) and len(bytes.fromhex(c)) == (held + 7) // 8
        except ValueError:
            ok = False
        _require(ok, f"{where}.correct[{j}]", f"{(held + 7) // 8} bytes in hex (one bit per held-out image)",
                 c)
    if d.get("select_acc") is not None:
        _shares(d["select_acc"], f"{where}.select_acc", n)
    if d.get("interval") is not None:
        interval = d["interval"]
        _require(isinstance(interval, list) and len(interval) == n, f"{where}.interval", f"a list of {n} intervals",
                 interval)
        for j, pair in enumerate(interval):
            _require(pair is None or (isinstance(pair, list) and len(pair) == 2 and all(_number(v) for v in pair)
                                      and 0 <= pair[0] <= pair[1] <= 1),
                     f"{where}.interval[{j}]", "null or [low, high] within 0 to 1", pair)


def _recipe(r, where: str, held: int, marks: int) -> None:
    _require(isinstance(r, dict), where, "a mapping", r)
    _rate(r.get("lr"), f"{where}.lr", optional=False)
    _require(r.get("bn_statistics") in MODES, f"{where}.bn_statistics", " or ".join(MODES), r.get("bn_statistics"))
    if r.get("dropped_at") is not None:
        _require(_whole(r["dropped_at"], 0), f"{where}.dropped_at", "a whole number of steps", r["dropped_at"])
    _figures(r, where, held, marks, whole=False)      # dropped by the halving, or stopped by an allowance
    if r.get("orders") is not None:         # the last mark's figure over data orders (engine/loop/recipe_orders.py)
        orders = r["orders"]
        _require(isinstance(orders, dict), f"{where}.orders", "a mapping", orders)
        _figures({"acc": orders.get("acc"), "correct": orders.get("correct")}, f"{where}.orders", held, 16, whole=False)
        _shares([orders.get("mean")], f"{where}.orders.mean", 1)
        _figures({"acc": [orders["mean"]], "correct": [orders["correct"][0]], "interval": [orders.get("interval")]},
                 f"{where}.orders", held, 1, whole=True)


def _set(name: str, v, held: int, marks: int) -> None:
    where = f"set_gains.sets[{name!r}]"
    _require(isinstance(v, dict), where, "a mapping", v)
    _require(_whole(v.get("tensors"), 0), f"{where}.tensors", "a whole number", v.get("tensors"))
    _figures(v, where, held, marks, whole=True)
    recipes = v.get("recipes")
    # Without recipes the set's own figures are its one recipe, in its statistics mode.
    if not recipes or v.get("bn_statistics") is not None:
        _require(v.get("bn_statistics") in MODES, f"{where}.bn_statistics", " or ".join(MODES), v.get("bn_statistics"))
    if v.get("lr") is not None:
        _rate(v["lr"], f"{where}.lr", optional=True)
    if v.get("same_set_as") is not None:
        _require(isinstance(v["same_set_as"], str), f"{where}.same_set_as", "a set's name", v["same_set_as"])
    if recipes is not None:
        _require(isinstance(recipes, list), f"{where}.recipes", "a list", recipes)
        for k, r in enumerate(recipes):
            _recipe(r, f"{where}.recipes[{k}]", held, marks)


def check(g) -> None:
    """Raises Bad naming the first field of the set gains `g` a device could not read as it reads them."""
    _require(isinstance(g, dict), "set_gains", "a mapping", g)
    steps = g.get("steps")
    _require(isinstance(steps, list) and steps and all(_whole(s, 1) for s in steps)
             and all(a < b for a, b in zip(steps, steps[1:])), "set_gains.steps",
             "a list of whole numbers above 0, increasing", steps)
    _require(_whole(g.get("rows"), 1), "set_gains.rows", "a whole number above 0", g.get("rows"))
    _require(_whole(g.get("held_out"), 1), "set_gains.held_out", "a whole number above 0", g.get("held_out"))
    _rate(g.get("lr"), "set_gains.lr", optional=True)
    if g.get("lr_grid") is not None:
        grid = g["lr_grid"]
        _require(isinstance(grid, list), "set_gains.lr_grid", "a list of learning rates", grid)
        for j, lr in enumerate(grid):
            _rate(lr, f"set_gains.lr_grid[{j}]", optional=False)
    for key in WORDS:
        if g.get(key) is not None:
            _require(isinstance(g[key], str), f"set_gains.{key}", "a string", g[key])
    # What a device compares its own images with (engine/loop/device_race.py).
    for key, lo, hi in (("bn_distance", 0, math.inf), ("bn_distance_se", 0, math.inf), ("start_acc", 0, 1)):
        if g.get(key) is not None:
            _require(_number(g[key]) and lo <= g[key] <= hi, f"set_gains.{key}",
                     f"a finite number from {lo}" + ("" if hi == math.inf else f" to {hi}"), g[key])
    if g.get("chosen_on") is not None:
        _require(_whole(g["chosen_on"], 0), "set_gains.chosen_on", "a whole number", g["chosen_on"])
    if g.get("partial") is not None:
        _require(isinstance(g["partial"], (str, bool)), "set_gains.partial", "a string or true/false", g["partial"])
    sets = g.get("sets")
    _require(isinstance(sets, dict) and all(isinstance(k, str) for k in sets), "set_gains.sets",
             "a mapping of set names", sets)
    for name, v in sets.items():
        _set(name, v, g["held_out"], len(steps))


def set_gains_problem(g) -> str | None:
    """What makes a card's set gains unreadable (a device reads them as its planner's expected gains), as
    one line naming the field; None where every field is sound."""
    try:
        check(g)
    except Bad as e:
        return str(e)
    return None
