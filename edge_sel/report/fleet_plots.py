"""Figures of fleet runs (edge-sel fleet): the global model's accuracy and the fleet's joules per
round, and each client's joules per round."""

from __future__ import annotations

from pathlib import Path

from edge_sel.report.plots import PALETTE, _colors, _figure, _name, _save
from edge_sel.report.runs import RunData, energy_axis_label


def is_fleet(run: RunData) -> bool:
    return run.config.get("phase") == "fleet"


def _rounds(run: RunData) -> list[dict]:
    return ([run.baseline] if run.baseline else []) + run.records


def rounds_figure(runs: list[RunData], path: Path) -> Path | None:
    fleet = [r for r in runs if is_fleet(r)]
    if not fleet:
        return None
    colors = _colors(fleet)
    fig = _figure(10, 3.6)
    acc_ax, energy_ax = fig.subplots(1, 2)
    for run in fleet:
        rounds = _rounds(run)
        points = [(r["round"], r["test_acc"] * 100) for r in rounds if r.get("test_acc") is not None]
        acc_ax.plot(*zip(*points), marker="o", color=colors[run.label], label=_name(run))
        joules = [(r["round"], r["energy_j"]) for r in rounds if r.get("round") and r.get("energy_j") is not None]
        if joules:
            energy_ax.plot(*zip(*joules), marker="s", color=colors[run.label], label=_name(run))
    acc_ax.set(xlabel="round (0: the warmup)", ylabel="global test accuracy (%)", title="global model, held-out set")
    energy_ax.set(xlabel="round", ylabel=energy_axis_label(fleet, "fleet energy"),
                  title="fleet energy per round (sum over clients)")
    for ax in (acc_ax, energy_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    energy_ax.set_ylim(bottom=0)
    acc_ax.legend(fontsize=7)
    return _save(fig, path)


def clients_figure(run: RunData, path: Path) -> Path | None:
    rounds = [r for r in run.records if r.get("clients")]
    if not rounds:
        return None
    names = sorted({str(c["client"]) for r in rounds for c in r["clients"]})
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    bottom = [0.0] * len(rounds)
    for i, name in enumerate(names):
        values = [next((c.get("energy_j") or 0.0 for c in r["clients"] if str(c["client"]) == name), 0.0)
                  for r in rounds]
        ax.bar([r["round"] for r in rounds], values, bottom=bottom, color=PALETTE[i % len(PALETTE)],
               label=f"client {name}")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(xlabel="round", ylabel=energy_axis_label([run], "client energy"), title=f"per-client energy: {_name(run)}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    return _save(fig, path)


def fleet_figures(runs: list[RunData], out: Path) -> list[tuple[str, Path | None, str]]:
    figures = [("Fleet: global accuracy and fleet energy per round", rounds_figure(runs, out / "fleet_rounds.png"),
                "The global model after each round on the server's held-out set (round 0: the warmup), and "
                "the joules of all clients in the round, summed as each client's meter reported them.")]
    for i, run in enumerate(r for r in runs if is_fleet(r)):
        figures.append((f"Fleet: energy per client, {run.label}", clients_figure(run, out / f"fleet_clients_{i + 1}.png"),
                        "Each client's joules per round, stacked: their sum is the round's fleet energy."))
    return [(title, p, caption) for title, p, caption in figures if p is not None]
