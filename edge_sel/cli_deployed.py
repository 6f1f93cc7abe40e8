"""`edge-sel deployed`: what a device serves now and what it served before (the deployed model's
journal), and a roll back to an earlier version."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_sel.cli_base import Group
from edge_sel.cli_options import HOME


def place_options(command):
    """--home and --deployed, as `edge-sel night` takes them (the same environment variables)."""
    for option in reversed([o for o in HOME if o.flag in ("--home", "--deployed")]):
        command = option(command)
    return command


def deployed_at(home: Path, deployed: Path | None) -> Path:
    return Path(deployed) if deployed is not None else Path(home) / "checkpoints" / "deployed"


@click.group("deployed", cls=Group)
def deployed_group():
    """The deployed model: its history of decisions and deployments, and a roll back."""


@deployed_group.command("history")
@place_options
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the N newest lines of the journal.")
@click.option("--json", "as_json", is_flag=True, help="The journal's lines as they are, oldest first.")
def history_cmd(home, deployed, last, as_json):
    """What serves now, what served before, and every decision and deployment since the journal
    began (DEPLOYED.history.jsonl beside the deployed link, appended and never rewritten)."""
    from edge_sel.engine.night import journal
    from edge_sel.engine.night.history import history_lines
    deployed = deployed_at(home, deployed)
    if as_json:
        for line in journal.read(deployed)[-last if last else None:]:
            click.echo(json.dumps(line))
        return
    for line in history_lines(deployed, last):
        click.echo(line)


@deployed_group.command("roll-back")
@place_options
@click.option("--to", "to", default=None, metavar="VERSION",
              help="The version to deploy again (a name `edge-sel deployed history` shows) [default: the one "
                   "that served before the current one].")
def roll_back_cmd(home, deployed, to):
    """Deploy an earlier version again (it must still be kept and load); the version replaced is
    kept, and the history records the roll back."""
    from edge_sel.engine.night.history import roll_back_to
    from edge_sel.engine.night.life import load_error
    deployed = deployed_at(home, deployed)
    was, now = roll_back_to(deployed, to, load_error)
    click.echo(f"rolled back: {deployed} -> {now.name} (was {was})")
