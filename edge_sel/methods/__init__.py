"""Methods: strategies (which samples) and updaters (which parameters), registered by name."""

from __future__ import annotations

from typing import Callable

from edge_sel.errors import InputError
from edge_sel.methods.base import Plan, RunContext, Strategy, Updater

# name -> factory(config dict) -> Strategy. Modules add themselves below.
STRATEGIES: dict[str, Callable[[dict], Strategy]] = {"dense": lambda cfg: Strategy()}
UPDATERS: dict[str, Callable[[dict], Updater]] = {"none": lambda cfg: Updater()}


def make_strategy(name: str, cfg: dict) -> Strategy:
    if name not in STRATEGIES:
        raise InputError(f"--strategy: unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](cfg)


def make_updater(name: str, cfg: dict) -> Updater:
    if name not in UPDATERS:
        raise InputError(f"--sparsity: unknown mode {name!r}; choose one of {', '.join(UPDATERS)}")
    return UPDATERS[name](cfg)


__all__ = ["Plan", "RunContext", "Strategy", "Updater", "STRATEGIES", "UPDATERS", "make_strategy",
           "make_updater"]
