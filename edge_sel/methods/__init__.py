"""Methods: strategies (which samples) and updaters (which parameters), registered by name."""

from __future__ import annotations

from typing import Callable

from edge_sel.errors import InputError
from edge_sel.methods.base import Gate, GatedStrategy, Plan, RunContext, Strategy, Updater

# name -> factory(method config dict) -> object. Method modules register themselves at the bottom.
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


__all__ = ["Gate", "GatedStrategy", "Plan", "RunContext", "Strategy", "Updater", "STRATEGIES", "GATES",
           "UPDATERS", "make_strategy", "make_updater"]

# Registrations (one import per method module; each adds its names to the registries above).
# --- sel ---
from edge_sel.methods import sel as _sel  # noqa: E402
_sel.register()
# --- gating ---
from edge_sel.methods import gating_registry as _gating  # noqa: E402
_gating.register()
# --- adaptation levers ---
from edge_sel.methods import bn_affine as _bn_affine  # noqa: E402
_bn_affine.register()
from edge_sel.methods import surgical as _surgical  # noqa: E402
_surgical.register()
