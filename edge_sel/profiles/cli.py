"""`edge-sel profiles list | show NAME | detect`."""

from __future__ import annotations

import json

import click

from edge_sel.cli_base import Group
from edge_sel.profiles import list_profiles, load_profile
from edge_sel.profiles.detect import detect
from edge_sel.profiles.schema import SCHEMA


def _toml_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


@click.group("profiles", cls=Group)
def profiles_group():
    """Device profiles: per-device defaults for finetune and monitor (--profile)."""


@profiles_group.command("list")
def list_cmd():
    """The shipped profiles."""
    for name in list_profiles():
        click.echo(f"{name:18s} {load_profile(name).description}")


@profiles_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved profile as JSON.")
def show_cmd(name, as_json):
    """The settings of a profile: a shipped NAME, auto, or a .toml file."""
    profile = load_profile(name)
    if as_json:
        click.echo(json.dumps(profile.to_json(), indent=2))
        return
    click.echo(f"# {profile.name}: {profile.description}")
    click.echo(f"# file: {profile.file}")
    if profile.detected:
        click.echo(f"# auto: {profile.detected}")
    settings = profile.settings()
    for section, keys in SCHEMA.items():
        present = [k for k in keys if k in settings]
        if section and present:
            click.echo(f"\n[{section}]")
            for key in present:
                click.echo(f"{key} = {_toml_value(settings[key])}")


@profiles_group.command("detect")
def detect_cmd():
    """Which profile `--profile auto` picks on this machine, and why."""
    found = detect()
    click.echo(f"{found.name}  ({found.reason})")
