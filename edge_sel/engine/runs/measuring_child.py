"""The measuring child of a budgeted run (engine/loop/measure_child.py): builds the run's trainer from
the spec the run wrote, plans as the run would beside the run's growth, keeping every count and step
cost it measures in the device's caches, and writes what that took. Nothing else is written.

Started by the run in an isolated interpreter (measure_child.child_command); main(SPEC, RESULT) exits
HANDOFF_FAILED where the spec names a class this interpreter cannot import (a model defined in a file or
a script: nothing of the run ran here, and the run measures in its own process).
"""

from __future__ import annotations

import json
import sys

import torch

from edge_sel.core import measuring
from edge_sel.engine.loop.measure_child import HANDOFF_FAILED
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.methods import make_strategy, make_updater


def main(spec_path: str, result_path: str) -> int:
    try:
        spec = torch.load(spec_path, weights_only=False)        # written by the run itself, in its private folder
    except (ModuleNotFoundError, AttributeError) as e:         # a class from a module only the run can import
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return HANDOFF_FAILED
    torch.set_num_threads(spec["threads"])
    measuring.child_growth_mb[0] = float(spec["spent_mb"])
    fields = spec["trainer"]
    cfg = fields["config"]
    try:
        Trainer(**fields, strategy=make_strategy(cfg.strategy, cfg.method), updater=make_updater(cfg.sparsity, cfg.method))
    except measuring.MeasuredOnly as done:
        trainer = done.args[0]
        cost = getattr(trainer, "memory_plan_cost", None) or {}
        scoring = trainer.ledger.scoring
        found = {"counts": cost.get("memory_plan_counts", 0), "counts_read": cost.get("memory_plan_counts_read", 0),
                 "flops": int(scoring["flops"]) + int(cost.get("memory_plan_trial_flops") or 0),
                 "samples": int(scoring["samples"]), "planning_s": cost.get("memory_plan_wall_s")}
        with open(result_path, "w") as f:
            json.dump(found, f)
        return 0
    print("edge-sel: the measuring child planned without stopping", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
