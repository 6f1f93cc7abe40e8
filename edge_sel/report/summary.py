"""The readable table printed at the end of a command."""

from __future__ import annotations

import click

from edge_sel.core.records import planning_of, read_records
from edge_sel.core.words import plural
from edge_sel.engine.loop.budget import STOPS, TIME


def _fmt(v, spec=".3f"):
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def energy_label(method: str | None) -> str:
    """'measured' only when every part came from a sensor; any estimate in it is said."""
    parts = set((method or "").split("+")) - {""}
    if "shared" in parts:
        return "measured on a GPU other processes shared (the card's joules, not this run's own)"
    if not parts or parts == {"estimated"}:
        return "estimated"
    return "partly estimated" if "estimated" in parts else "measured"


def shipping_rows(summary: dict) -> list[tuple[str, dict]]:
    """A pretrain's work after its last epoch for the devices it ships to (anchors and Fisher
    information, each set's recipes), for rows of their own below the epochs."""
    return [(label, summary[key]) for label, key in (("anchors", "source_memory"), ("recipes", "set_gains"))
            if isinstance(summary.get(key), dict) and summary[key].get("flops") is not None]


def epoch_table(records: list[dict], shipped: list[tuple[str, dict]] = ()) -> str:
    """Per epoch: training's figures, its evaluation's joules apart; planning (a memory plan, a default
    choice) on a row of its own, taken out of the first epoch's; `shipped` (shipping_rows) after them."""
    head = ["epoch", "stage", "active", "loss", "train", "val", "test", "GFLOP", "wall s", "train J", "eval J",
            "source"]
    rows = []
    for r in records:
        source = f"{r.get('energy_source')}/{r.get('energy_method')}" if r.get("energy_source") else "-"
        if r.get("phase") == "baseline":       # the starting checkpoint, evaluated before any step
            rows.append(["start", "-", "-", "-", "-", _fmt(r.get("val_acc")), _fmt(r.get("test_acc")),
                         "0.0", "-", "-", _fmt(r.get("eval_energy_j"), ".1f"), source])
            continue
        plan_s, plan_j, plan_flops = planning_of(r)
        if plan_s:
            rows.append(["plan", "-", "-", "-", "-", "-", "-", f"{plan_flops / 1e9:.1f}", f"{plan_s:.1f}",
                         _fmt(plan_j, ".1f"), "-", source])
        gflop = ((r.get("flops_train") or 0) - plan_flops) / 1e9
        wall = None if r.get("wall_s") is None else r["wall_s"] - plan_s
        energy = None if r.get("energy_j") is None else r["energy_j"] - (plan_j or 0.0)
        rows.append([str(r.get("epoch")), _fmt(r.get("stage"), ""), _fmt(r.get("activation"), ".2f"),
                     _fmt(r.get("train_loss")), _fmt(r.get("train_acc")), _fmt(r.get("val_acc")),
                     _fmt(r.get("test_acc")), f"{gflop:.1f}", _fmt(wall, ".1f"), _fmt(energy, ".1f"),
                     _fmt(r.get("eval_energy_j"), ".1f"), source])
    for label, block in shipped:
        source = (f"{block.get('energy_source')}/{block.get('energy_method')}" if block.get("energy_source") else
                  rows[-1][-1] if rows else "-")      # metered in the run's own windows
        rows.append([label, "-", "-", "-", "-", "-", "-", f"{block['flops'] / 1e9:.1f}", _fmt(block.get("wall_s"), ".1f"),
                     _fmt(block.get("energy_j"), ".1f"), "-", source])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


FLOP_PARTS = (("forward", "flops_forward"), ("backward", "flops_backward"), ("penalty", "flops_penalty"),
              ("scoring", "flops_scoring"), ("calibration", "flops_calibration"), ("rolled back", "rolled_back_flops"))


def flops_split(totals: dict) -> str:
    """'12.30 G = forward 3.50 G + backward 6.93 G + scoring 1.87 G': every part that is not zero,
    so the parts add up to the total (forward and backward are always named)."""
    total = totals.get("flops_train") or 0
    parts = [(name, totals.get(key) or 0) for name, key in FLOP_PARTS]
    shown = [(name, v) for name, v in parts if v or name in ("forward", "backward")]
    rest = total - sum(v for _, v in parts)
    if abs(rest) >= 5e6:       # a part this list does not know yet: still add up
        shown.append(("other", rest))
    return f"{total / 1e9:.2f} G = " + " + ".join(f"{name} {v / 1e9:.2f} G" for name, v in shown)


def all_in_line(summary: dict) -> str:
    """The output model's test accuracy and what the whole run cost, beside its split."""
    t, out = summary.get("totals", {}), summary.get("output_model") or {}
    which = {"best": f"epoch {out.get('epoch')}", "last": "last epoch", "warmup": "the starting checkpoint",
             "bn_adapt": "BatchNorm re-estimated"}.get(out.get("weights"), out.get("weights"))
    shipped, gains = summary.get("source_memory"), summary.get("set_gains")
    probe = (summary.get("layout") or {}).get("probe_flops") or 0      # in flops_all (engine/runs/summary.py)
    flops = (f"{(t.get('flops_all') or 0) / 1e9:.2f} GFLOP (training {(t.get('flops_train') or 0) / 1e9:.2f}, "
             f"evaluation {(t.get('flops_eval') or 0) / 1e9:.2f}"
             + (f", source memory {shipped['flops'] / 1e9:.2f}" if shipped else "")
             + (f", set gains {gains['flops'] / 1e9:.2f}" if gains else "")
             + (f", layout probe {probe / 1e9:.2f}" if probe else "") + ")")
    if t.get("energy_all_j") is None:
        joules = "energy not measured"
    else:
        share = t.get("eval_energy_share")
        shipped_j = (shipped or {}).get("energy_j")
        planning = t.get("planning_energy_j")
        training = None if t.get("energy_j") is None else t["energy_j"] - (planning or 0.0)
        joules = (f"{t['energy_all_j']:.1f} J {energy_label(t.get('energy_method'))} (training "
                  f"{_fmt(training, '.1f')}" + (f", planning {planning:.1f}" if planning else "")
                  + f", evaluation {_fmt(t.get('eval_energy_j'), '.1f')}"
                  + (f", {100 * share:.0f}% of it" if share is not None else "")
                  # the anchors and Fisher written for devices: a pretrain's largest cost on few images
                  + (f", source memory {shipped_j:.1f}" if shipped_j is not None else "")
                  + (f", set gains {gains['energy_j']:.1f}" if (gains or {}).get("energy_j") is not None else "") + ")")
    drawn = summary.get("guard_anchors") or {}
    of = (f" on {drawn['evaluated']:,} of {drawn['held']:,}" if (drawn.get("evaluated") or 0) < (drawn.get("held") or 0)
          else "")
    anchors = f", guard anchors {_fmt(out['anchor_acc'])}{of}" if out.get("anchor_acc") is not None else ""
    return f"output model ({which}): test acc {_fmt(out.get('test_acc'))}{anchors}; all in: {flops}, {joules}"


def shipped_line(block: dict) -> str:
    """One line for the end of a pretrain: what devices get with the checkpoint (or why nothing)."""
    if "none" in block:
        return f"no anchors or Fisher information shipped: {block['none']}; {block['wall_s']:.1f} s"
    a, f, s = block["anchors"], block["fisher"], block["source"]
    guard = "-" if a.get("guard_acc") is None else f"{100 * a['guard_acc']:.1f}%"
    return (f"shipped with the checkpoint: {a['samples']:,} anchors ({megabytes(a['bytes'])}: {a['replay']:,} replay, "
            f"{a['guard']:,} guard, source accuracy on the guard {guard}), Fisher of {parameters(f['parameters'])} "
            f"on {f['samples']:,} samples ({megabytes(f['bytes'])}), source weights ({megabytes(s['bytes'])}); "
            f"{block['flops'] / 1e9:.2f} GFLOP, {block['wall_s']:.1f} s")


def recipes_line(gains: dict) -> str:
    """One line for the end of a pretrain: the recipes shipped for a device's own choice (or why none,
    or where they stopped), and their cost."""
    joules = "" if gains.get("energy_j") is None else f", {gains['energy_j']:,.1f} J"
    cost = f"{gains['flops'] / 1e9:.2f} GFLOP, {gains['wall_s']:.1f} s{joules}"
    if "none" in gains:
        return f"no recipes shipped for devices: {gains['none']}; {cost}"
    partial = f" (partial: {gains['partial']})" if gains.get("partial") else ""
    orders = gains.get("orders") or {}
    thick = f", the last mark's {', '.join(orders['sets'])} in {orders['count']} data orders" if orders.get("sets") else ""
    return (f"shipped with the checkpoint: {len(gains['acc'])} sets' held-out accuracy at "
            f"{gains.get('trials', len(gains['acc']))} recipes (learning rates {', '.join(f'{x:g}' for x in gains.get('lr_grid') or [gains['lr']])}, "
            f"statistics frozen and re-estimated) up to {gains['steps'][-1]} steps{partial}{thick}, for a device's own "
            f"choice; {cost}, within {gains.get('allowance', 'no allowance')} (--set-gains-steps 0: none)")


def parameters(n: int) -> str:
    """'2,290 parameters' for a small model, '0.39 M parameters' for a larger one (never '0.00 M')."""
    return f"{n:,} parameters" if n < 100_000 else f"{n / 1e6:.2f} M parameters"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def results_said(summary: dict) -> str:
    """Epochs run and the accuracies they reached; a run stopped before an epoch finished says so
    rather than printing a best epoch of None."""
    run, planned = summary["epochs_run"], summary.get("epochs_planned") or summary.get("config", {}).get("epochs")
    stopped = summary.get("stop_reason") == "interrupted"
    epochs = f"stopped after {run} of {plural(planned, 'epoch')}" if stopped and planned else plural(run, 'epoch')
    if not run:
        planned_said = f" of {plural(planned, 'epoch')}" if planned else ""
        return (f"stopped before its first epoch{planned_said} finished: no epoch's accuracy or counted FLOPs yet "
                f"(the state to resume from is kept)" if stopped else "no epoch run")
    best = summary["best_val"]
    stage = f" of the {best['stage']} stage" if best.get("stage") else ""
    out = summary.get("output_model") or {}
    last = summary["final"]["test_acc"]
    if out.get("weights") not in (None, "last") and out.get("test_acc") != last:
        # The headline is the model handed back; the last epoch's figure beside it, named as such.
        which = f"epoch {out['epoch']}" if out.get("weights") == "best" else out["weights"]
        headline = f"output model's test acc {_fmt(out.get('test_acc'))} ({which}; last epoch's {_fmt(last)})"
    else:
        headline = f"output model's test acc {_fmt(last)}"
    return f"{epochs}, {headline}, best val {_fmt(best['val_acc'])} (epoch {best['epoch']}{stage})"


def small_validation_line(summary: dict) -> str | None:
    """What a run whose validation held few images did with them (summary.output_model's flags)."""
    out = summary.get("output_model") or {}
    n = out.get("chosen_on_val_images")
    if n is None:
        return None
    if out.get("could_not_tell"):
        return (f"note: validation held {n} images, too few to tell these epochs apart (a few points are noise "
                f"below 300): the output model is the trained model, the last epoch, as wherever the evidence cannot "
                f"tell; validate on more (--val-subset N) to choose between them")
    return (f"note: validation held {n} images, and on them the last epoch was resolvably worse (paired test at "
            f"95%): the output model is the earlier one")


def memory_line(memory: dict) -> str:
    """Counted and measured peak memory in one line (summary.json's `memory`)."""
    said = []
    if memory.get("counted_mb") is not None:
        # The parts that add up to the peak (`saved` is over the whole step, not a part of it), largest first.
        parts = {k: v for k, v in (memory.get("counted_parts_mb") or {}).items() if k != "saved" and v}
        split = " + ".join(f"{k} {v:,.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
        said.append(f"a training step counted {memory['counted_mb']:,.1f} MiB" + (f" = {split}" if split else ""))
    if memory.get("eval_counted_mb") is not None:
        said.append(f"an evaluation pass {memory['eval_counted_mb']:,.1f} MiB")
    method = memory.get("measure_method")
    if method in (None, "unavailable"):
        measured = "not measured here"
    else:
        measured = (f"measured {_fmt(memory.get('measured_mb'), ',.1f')} MiB training, "
                    f"{_fmt(memory.get('eval_measured_mb'), ',.1f')} MiB evaluating, over the level before "
                    f"training ({method})")
    return "memory: " + "; ".join(said) + "; " + measured


def against_budget(mib: float, budget: float) -> str:
    if mib <= budget:
        return f"{mib:,.1f} MiB, within it"
    return f"{mib:,.1f} MiB, over it by {mib - budget:,.1f} MiB ({mib / budget:.2f}x)"


def budget_line(memory: dict) -> str | None:
    """A --memory-budget run's closing words: the count the plan fitted and what was measured, each
    against the budget (None without a budget)."""
    budget = memory.get("budget_mb")
    if budget is None:
        return None
    said = []
    if memory.get("counted_mb") is not None:
        said.append(f"the training step counted {against_budget(memory['counted_mb'], budget)}")
    if memory.get("eval_counted_mb") is not None and memory.get("eval_beside_mb") is not None:
        said.append(f"an evaluation pass counted {memory['eval_counted_mb']:,.1f} MiB beside the "
                    f"{memory['eval_beside_mb']:,.1f} MiB training keeps")
    measured = [(what, memory.get(key)) for what, key in (("training", "measured_mb"), ("evaluating", "eval_measured_mb"))
                if memory.get(key) is not None]
    if measured:
        said.append("measured over the level before training: " + ", ".join(f"{what} {against_budget(v, budget)}"
                                                                              for what, v in measured))
    if memory.get("process_peak_mb") is not None:
        said.append("the whole process (Python, torch, the data) peaked at "
                    + against_budget(memory["process_peak_mb"], budget).replace(" MiB,", " MiB resident,", 1))
    return f"memory budget {budget:g} MiB (what the plan fits the training step's count in): " + "; ".join(said)


def budget_stop_line(summary: dict) -> str | None:
    """The closing line of a run its --energy-budget or --time-budget stopped (None for any other):
    what it spent against the limit, and what one more step and the final evaluation were estimated at."""
    reason = summary.get("stop_reason")
    if reason not in STOPS:
        return None
    line = f"stopped before the {reason.replace('_', ' ')} would be exceeded"
    stop = summary.get("budget_stop") or {}
    unit = "s" if reason == TIME else "j"
    if stop.get(f"limit_{unit}") is not None:
        spent = "measured" if unit == "s" else energy_label((summary.get("totals") or {}).get("energy_method"))
        need = stop[f"next_step_{unit}_estimated"] + stop[f"final_evaluation_{unit}_estimated"]
        said = "J" if unit == "j" else "s"
        line += (f" ({stop[f'spent_{unit}']:,.1f} of {stop[f'limit_{unit}']:,.6g} {said} spent, {spent}; "
                 f"one more step and the final evaluation estimated at {need:,.1f} {said})")
    return line + "; records and checkpoint are written"


def print_summary(summary: dict, quiet: bool = False) -> None:
    run_dir = summary.get("run_dir")
    if not quiet:
        records = read_records(f"{run_dir}/metrics.jsonl")
        click.echo(epoch_table(records, shipping_rows(summary)))
        t = summary["totals"]
        click.echo(f"\n{summary['phase']}: {summary['model']['architecture']} on {summary['dataset'].get('name')}, "
                   + results_said(summary))
        if summary["epochs_run"]:
            planning_s = t.get("planning_wall_s") or 0.0
            train_s = None if t.get("train_wall_s") is None else max(0.0, t["train_wall_s"] - planning_s)
            click.echo(f"counted training FLOPs {flops_split(t)}, train time {_fmt(train_s, '.1f')} s"
                       + (f", planning {planning_s:.1f} s before it" if planning_s else ""))
        if t.get("energy_j") is not None:
            kind = energy_label(t.get("energy_method"))
            planning_j = t.get("planning_energy_j")
            click.echo(f"energy {t['energy_j'] - (planning_j or 0.0):.1f} J training"
                       + (f", {planning_j:.1f} J planning" if planning_j else "")
                       + f" ({kind}, source {t['energy_source']}, method {t['energy_method']})")
        if summary.get("memory"):
            click.echo(memory_line(summary["memory"]))
    said = budget_line(summary.get("memory") or {})
    if said:
        click.echo(said)
    if summary.get("output_model"):     # a torchrun rank other than 0 writes no model: no totals to show
        click.echo(all_in_line(summary))
        if small_validation_line(summary):
            click.echo(small_validation_line(summary))
    elif summary.get("phase") == "pretrain" and summary.get("stop_reason") == "interrupted":
        click.echo("no checkpoint written: a pretrain that did not finish is no warmup for a fine-tune")
    if summary.get("source_memory") and not quiet:
        click.echo(shipped_line(summary["source_memory"]))
    if summary.get("set_gains") and not quiet:
        click.echo(recipes_line(summary["set_gains"]))
    kept = summary.get("kept")
    bank = summary.get("bn_bank") if (summary.get("bn_bank") or {}).get("written") else None
    if summary.get("stop_reason") == "interrupted":
        pass            # nothing is concluded about an unfinished run (the resume hint follows)
    elif kept:
        if kept["kept"] == "warmup" or kept.get("rule") == "unresolved":
            with_bank = bank and kept["kept"] == "warmup"
            click.echo(f"NOTE: {kept['reason']}" + (" (its weights, with the statistics below)." if with_bank else "."))
        else:
            click.echo(f"output model: {kept['reason']}")
    if bank:
        tonight = bank["tonight"]
        click.echo(f"BatchNorm statistics per condition: tonight's images {'are the new' if tonight['new'] else 'join'} "
                   f"condition {tonight['condition']} (distance to the nearest kept one "
                   f"{min(tonight['distances'].values()):.3f}, radius {bank['radius']:g}); kept: "
                   + ", ".join(f"{c['name']} ({c['nights']} night{'s' if c['nights'] != 1 else ''})"
                               for c in bank["conditions"])
                   + f" [{bank['file']}, {bank['bytes'] / 1e6:.2f} MB]")
    click.echo(f"run directory: {run_dir}")
