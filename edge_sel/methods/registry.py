"""The method registries: name -> factory(method config dict) -> object. They start with the
methods that need no module of their own; edge_sel/methods/__init__.py registers the rest."""

from __future__ import annotations

from typing import Callable

from edge_sel.errors import InputError
from edge_sel.methods.base import Gate, GatedStrategy, Strategy, Updater

STRATEGIES: dict[str, Callable[[dict], Strategy]] = {"dense": lambda cfg: Strategy()}
GATES: dict[str, Callable[[dict], Gate]] = {"all": lambda cfg: Gate()}
UPDATERS: dict[str, Callable[[dict], Updater]] = {"none": lambda cfg: Updater()}


def make_strategy(name: str, cfg: dict) -> Strategy:
    """The strategy, wrapped by `--gate` when one is given (e.g. sel stages gated by sundew)."""
    if name not in STRATEGIES:
        raise InputError(f"--strategy: unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name](cfg)
    gate = cfg.get("gate") or "all"
    if gate == "all":
        return strategy
    if gate not in GATES:
        raise InputError(f"--gate: unknown gate {gate!r}; choose one of {', '.join(GATES)}")
    return GatedStrategy(strategy, GATES[gate](cfg))


def make_updater(name: str, cfg: dict) -> Updater:
    if name not in UPDATERS:
        raise InputError(f"--sparsity: unknown mode {name!r}; choose one of {', '.join(UPDATERS)}")
    return UPDATERS[name](cfg)
