"""`edge-sel monitor`: live power, temperatures and throttle state from the chosen meters."""

from __future__ import annotations

import json
import time

import click

from edge_sel.cli_base import Command
from edge_sel.energy.choose import METER_NAMES, open_meter
from edge_sel.energy.estimate import MACHINE


def _row(sample: dict, start_t: float, source: str) -> dict:
    return {
        "t": round(sample["t"] - start_t, 3),
        "power_w": None if sample["power_w"] is None else round(sample["power_w"], 3),
        "components": {name: round(w, 3) for name, w in sample["components"].items()},
        "temperatures": {name: round(c, 2) for name, c in sample["temperatures"].items()},
        "throttled": bool(sample["throttle_reasons"]),
        "throttle_reasons": sample["throttle_reasons"],
        "source": source,
    }


def _header(meter) -> list[str]:
    info = meter.describe()
    lines = [f"energy source: {info['source']} ({info['method']})"]
    lines += [f"  {m['name']}: {m['detail']}" for m in info["meters"]]
    lines += [f"  skipped {name}: {why}" for name, why in info["skipped"].items()]
    sensors = info["temperature_sensors"]
    lines.append(f"  temperature sensors: {', '.join(sensors) if sensors else 'none'}")
    return lines


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@click.command("monitor", cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per sample.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Seconds between samples.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Stop after N samples (default: run until Ctrl-C).")
@click.option("--meter", "meters", multiple=True, type=click.Choice(METER_NAMES),
              help="Use this meter instead of the automatic choice (repeatable).")
@click.option("--profile", default=None, metavar="NAME|auto|FILE",
              help="Device profile: its meters (unless --meter is given), rails and watts per core.")
def monitor(as_json: bool, interval: float, samples: int | None, meters: tuple[str, ...],
            profile: str | None) -> None:
    """Show live power, temperatures and throttle state of the energy meters."""
    rails = watts_per_core = None
    if profile is not None:
        from edge_sel.profiles import load_profile
        loaded = load_profile(profile)
        meters = meters or tuple(loaded.meters or ())
        rails = list(loaded.rails) if loaded.rails else None
        watts_per_core = loaded.watts_per_core
        if not as_json:
            click.echo(f"profile: {loaded.name}" + (f" (auto: {loaded.detected})" if loaded.detected else ""))
    # The monitor itself is idle: its estimate (when no sensor exists) charges every process.
    meter = open_meter(prefer=list(meters) or None, interval_s=interval, rails=rails,
                       watts_per_core=watts_per_core, estimate_scope=MACHINE)
    try:
        start = meter.sample_once()  # counters need one reading before they give power
        columns = meter.component_names
        if not as_json:
            for line in _header(meter):
                click.echo(line)
            names = "".join(f"{name:>16}" for name in columns)
            click.echo(f"{'t_s':>8}{'power_W':>10}{names}{'max_C':>8}  {'hottest':<16}throttle")
        taken = 0
        while samples is None or taken < samples:
            time.sleep(interval)
            row = _row(meter.sample_once(read_temperatures=True), start["t"], meter.source)
            taken += 1
            if as_json:
                click.echo(json.dumps(row))
                continue
            temps = row["temperatures"]
            hottest = max(temps, key=temps.get) if temps else None
            cells = "".join(f"{_fmt(row['components'].get(name), 2):>16}" for name in columns)
            throttle = ",".join(row["throttle_reasons"]) or "-"
            click.echo(f"{row['t']:>8.1f}{_fmt(row['power_w'], 2):>10}{cells}"
                       f"{_fmt(temps.get(hottest), 1):>8}  {hottest or '-':<16}{throttle}")
    except KeyboardInterrupt:
        pass
    finally:
        meter.close()
