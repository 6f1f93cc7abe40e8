"""Registers the sample gates (sundew, random, infobatch, dihcl) as gates (`--gate NAME`, over any
strategy) and as strategies (`--strategy NAME`, over all samples); the AST seed's own
Sundew is the sundew strategy under --sundew-profile."""

from __future__ import annotations

from edge_sel.methods.base import GatedStrategy, Strategy
from edge_sel.methods.registry import GATES, STRATEGIES
from edge_sel.methods.select.ast_seed import SeedSundew
from edge_sel.methods.select.dihcl import DihclGate
from edge_sel.methods.select.gating_config import gating_config
from edge_sel.methods.select.infobatch import InfoBatchGate
from edge_sel.methods.select.random_gate import RandomGate
from edge_sel.methods.select.sundew import SundewGate

GATE_CLASSES = {"sundew": SundewGate, "random": RandomGate, "infobatch": InfoBatchGate, "dihcl": DihclGate}


def _gate_factory(cls):
    return lambda method: cls(gating_config(method))


def _strategy_factory(name: str, cls):
    def make(method: dict):
        cfg = gating_config(method)
        if name == "sundew" and cfg.sundew_profile:
            return SeedSundew(cfg)
        return GatedStrategy(Strategy(), cls(cfg))
    return make


def register() -> None:
    for name, cls in GATE_CLASSES.items():
        GATES[name] = _gate_factory(cls)
        STRATEGIES[name] = _strategy_factory(name, cls)
