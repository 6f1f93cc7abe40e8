"""`edge-sel promote`: deploy a run's model if it beats the deployed one, and the one line that
says the verdict (the night's journal prints it too)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge_sel.cli_base import Command


@click.command("promote", cls=Command)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--deployed", type=click.Path(path_type=Path), required=True,
              help="The device's deployed checkpoint (a link to a versioned directory; a plain directory is "
                   "migrated), replaced only by a run that beats it on the run's local validation data.")
@click.option("--force", is_flag=True,
              help="Judge a pretrain directory, or a run that did not start from the deployed model, all the same "
                   "(it must still beat the deployed model).")
@click.option("--max-forgetting", type=float, default=None, metavar="P",
              help="Points of guard-anchor accuracy below the source model a deployed model may lose "
                   "[default: the run's own --max-forgetting].")
def promote_cmd(run_dir, deployed, force, max_forgetting):
    """Deploy a run's output model if it beats the deployed model itself on the run's validation data
    and does not forget more than --max-forgetting points on the guard anchors (a deployed model that
    has forgotten more is replaced by a run's model within the limit).

    Exit 0: promoted, or already deployed (nothing written); 3: judged and not promoted (not a
    failure); 2: bad input; 1: the swap failed (the deployed model is unchanged). Every decision is
    appended to the deployed model's history: `edge-sel deployed history`."""
    from edge_sel.config import check_points
    from edge_sel.engine.night.promote import NOT_PROMOTED_EXIT, promote
    if max_forgetting is not None:
        check_points("--max-forgetting", max_forgetting)
    decision = promote(run_dir, deployed, force, max_forgetting=max_forgetting)
    click.echo(decision_line(decision, run_dir))
    if not decision.promote and decision.rule != "already-deployed":
        sys.exit(NOT_PROMOTED_EXIT)


def decision_line(decision, run_dir) -> str:
    """promote's verdict in one line: the rule, why, and what validating the deployed model cost."""
    cost = decision.evaluation
    anchors = f" and {cost['anchor_samples']} guard anchors" if cost and cost.get("anchor_samples") else ""
    served = [c for c in ((cost or {}).get("served") or {}).get("conditions", []) if c.get("candidate_acc") is not None]
    anchors += (f", both models on {sum(c['samples'] for c in served)} images of its {len(served)} conditions"
                if served else "")
    # The validation passes apart from the rest of the check (reading and shifting the data, loading
    # the model, re-estimating a bank): a meter's joules cover the whole check, not the passes alone.
    whole = "" if not cost or cost.get("total_s") is None else \
        (f"; the whole check {cost['total_s']:.1f} s with reading and shifting the data and loading the model"
         + (", re-estimating the bank" if cost.get("flops_bank_estimate") else "")
         + (f", {cost['energy_j']:.1f} J" if cost.get("energy_j") is not None else ""))
    checked = (f" [deployed model validated on {cost['samples']} samples{anchors}, {cost['flops'] / 1e9:.2f} GFLOP, "
               f"validation passes {cost['wall_s']:.1f} s{whole}]" if cost else "")
    if decision.promote:
        return f"promoted ({decision.rule}): {run_dir}: {decision.why}{checked}"
    if decision.rule == "already-deployed":
        return f"already deployed: {run_dir}: {decision.why}"
    return f"not promoted ({decision.rule}): {run_dir}: {decision.why}; the deployed model stays{checked}"
