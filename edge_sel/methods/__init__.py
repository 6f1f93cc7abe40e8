"""Methods: strategies (which samples) and updaters (which parameters), registered by name.

Every method is registered here, in one place: importing this package fills the registries of
edge_sel/methods/registry.py (and the presets of presets.py) with all of them.
"""

from __future__ import annotations

from edge_sel.methods import sel
from edge_sel.methods.base import Gate, GatedStrategy, Plan, RunContext, Strategy, Updater
from edge_sel.methods.registry import GATES, STRATEGIES, UPDATERS, make_strategy, make_updater
from edge_sel.methods.select import gating_registry
from edge_sel.methods.update import bn_affine, fixed_sets, lite_residual, lottery, surgical

__all__ = ["Gate", "GatedStrategy", "Plan", "RunContext", "Strategy", "Updater", "STRATEGIES", "GATES",
           "UPDATERS", "make_strategy", "make_updater"]

sel.register()               # the sel strategy, mask and layers updaters, the seed's sel presets
gating_registry.register()   # sample gates (sundew, random, infobatch, dihcl), as gates and strategies
bn_affine.register()         # BatchNorm-affine training
surgical.register()          # Auto-RGN block choice and the adapt preset
lottery.register()           # lottery ticket retraining with a fixed mask
fixed_sets.register()        # one set for the run: classifier, last-k, bias-norm, a memory plan's budget
lite_residual.register()     # TinyTL's lite residual branches beside frozen blocks, trained with the biases
