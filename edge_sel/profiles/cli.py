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


def source_comments(file: str) -> dict[tuple[str, str], list[str]]:
    """Per (table, key) of a profile file and the shipped profiles it extends: the comment lines
    just above the key and the one after its value, where the profiles cite their sources."""
    import tomllib
    from pathlib import Path

    from edge_sel.profiles import _shipped_dir
    found: dict[tuple[str, str], list[str]] = {}
    path: Path | None = Path(file)
    while path is not None and path.is_file():
        text = path.read_text(encoding="utf-8")
        table, above = "", []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped)
            elif stripped.startswith("[") and stripped.endswith("]"):
                table, above = stripped[1:-1].strip(), []
            elif "=" in stripped:
                key = stripped.split("=", 1)[0].strip()
                inline = stripped.split("#", 1)[1].strip() if "#" in stripped.split("=", 1)[1] else ""
                found.setdefault((table, key), above + ([f"# {inline}"] if inline else []))
                above = []
            else:
                above = []
        base = tomllib.loads(text).get("extends")
        path = _shipped_dir() / f"{base}.toml" if isinstance(base, str) else None
    return found


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
    comments = source_comments(profile.file) if profile.file else {}
    for section, keys in SCHEMA.items():
        present = [k for k in keys if k in settings]
        if section and present:
            click.echo(f"\n[{section}]")
            for key in present:
                for line in comments.get((section, key), []):      # the value's source, as the file says it
                    click.echo(line)
                click.echo(f"{key} = {_toml_value(settings[key])}")


@profiles_group.command("detect")
def detect_cmd():
    """Which profile `--profile auto` picks on this machine, and why."""
    found = detect()
    click.echo(f"{found.name}  ({found.reason})")
