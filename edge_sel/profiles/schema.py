"""What a device profile may contain, and the checks that turn a parsed TOML table into values.

Every problem is reported as `FILE: section.key: what is wrong, got VALUE`, so a user can fix a
hand-written profile without reading code. Unknown sections and keys are errors (a typo would
otherwise be ignored silently).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from edge_sel.config import GUARD_TEMP_C, MAX_MEMORY_BUDGET_MB
from edge_sel.errors import InputError

METERS = ("nvml", "rapl", "jetson", "battery", "estimate")   # edge_sel.energy.METER_NAMES
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "mixed")     # mixed: the older name of auto
DEVICES = ("cpu", "cuda", "mps", "auto")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class Bad(Exception):
    """A value that fails its check; the message says what the key must be."""


def show(value: Any) -> str:
    """A value as it would be written in TOML, for messages: "hot", 85, ["jetson"]."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], float]:
    span = f"greater than {lo:g} and at most {hi:g}" if lo_open else f"between {lo:g} and {hi:g}"

    def check(value):
        if not _is_number(value) or not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
            raise Bad(f"must be a number {span}, got {show(value)}")
        return float(value)
    return check


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise Bad(f"must be an integer between {lo} and {hi}, got {show(value)}")
        return value
    return check


def text(pattern: re.Pattern | None = None, what: str = "a string") -> Callable[[Any], str]:
    def check(value):
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            raise Bad(f"must be {what}, got {show(value)}")
        return value
    return check


def choice(options: tuple[str, ...], extra: str = "") -> Callable[[Any], str]:
    listed = ", ".join(f'"{o}"' for o in options) + (f" or {extra}" if extra else "")

    def check(value):
        if not isinstance(value, str) or value not in options:
            raise Bad(f"must be one of {listed}, got {show(value)}")
        return value
    return check


def device(value):
    if isinstance(value, str) and re.fullmatch(r"cuda:\d+", value):
        return value
    return choice(DEVICES, '"cuda:N"')(value)


def registry(kind: str) -> Callable[[Any], str]:
    """A strategy or sparsity name, checked against the method registries (imported only when a
    profile names one, since they import torch)."""
    def check(value):
        from edge_sel.methods import STRATEGIES, UPDATERS
        names = tuple(STRATEGIES) if kind == "strategy" else tuple(UPDATERS)
        return choice(names)(value)
    return check


def string_list(item: Callable[[Any], str], what: str) -> Callable[[Any], tuple[str, ...]]:
    def check(value):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise Bad(f"must be a list of {what}, got {show(value)}")
        for v in value:
            item(v)
        if len(set(value)) != len(value):
            raise Bad(f"names a value twice, got {show(value)}")
        return tuple(value)
    return check


def meter_name(value):
    return choice(METERS)(value)


def rail_label(value):
    return text(re.compile(r"^[A-Za-z0-9_']+$"), "an INA3221/INA238 rail label like VDD_IN")(value)


# section -> key -> check. Keys are unique across sections: each becomes a Profile field.
SCHEMA: dict[str, dict[str, Callable[[Any], Any]]] = {
    "": {
        "name": text(NAME_PATTERN, "a lower-case name (letters, digits, '-', '.', '_')"),
        "description": text(),
        "extends": text(NAME_PATTERN, "the name of a shipped profile"),
    },
    "train": {
        "device": device,
        "precision": choice(PRECISIONS),
        "batch_size": integer(1, 65536),
        "cpu_threads": integer(1, 1024),
        "memory_budget_mb": number(0, MAX_MEMORY_BUDGET_MB, lo_open=True),
    },
    "method": {
        "strategy": registry("strategy"),
        "target_activation": number(0, 1, lo_open=True),
        "sparsity": registry("sparsity"),
    },
    "energy": {
        "meters": string_list(meter_name, "meter names (" + ", ".join(METERS) + ")"),
        "rails": string_list(rail_label, "rail labels"),
        "watts_per_core": number(0, 500, lo_open=True),
        "budget_j": number(0, 1e9, lo_open=True),
        "budget_per_epoch_j": number(0, 1e9, lo_open=True),
    },
    "thermal": {
        "max_temp_c": number(*GUARD_TEMP_C),
        "hysteresis_c": number(0, 30),
    },
}


def check_table(data: dict, where: str) -> dict[str, Any]:
    """Validate one parsed profile file; return {key: value} over all sections."""
    values: dict[str, Any] = {}
    for key, content in data.items():
        if key in SCHEMA[""]:
            values.update(_check_section("", {key: content}, where))
        elif key and key in SCHEMA and isinstance(content, dict):
            values.update(_check_section(key, content, where))
        elif key and key in SCHEMA:
            raise InputError(f"{where}: [{key}]: must be a table, got {show(content)}")
        else:
            known = ", ".join(list(SCHEMA[""]) + [f"[{s}]" for s in SCHEMA if s])
            raise InputError(f"{where}: {key}: unknown key (known: {known})")
    return values


def _check_section(section: str, content: dict, where: str) -> dict[str, Any]:
    values = {}
    for key, value in content.items():
        label = f"{section}.{key}" if section else key
        if key not in SCHEMA[section]:
            known = ", ".join(SCHEMA[section])
            raise InputError(f"{where}: {label}: unknown key (known: {known})")
        try:
            values[key] = SCHEMA[section][key](value)
        except Bad as e:
            raise InputError(f"{where}: {label}: {e}") from None
    return values


def check_combination(values: dict[str, Any], where: str) -> None:
    """Checks that involve more than one key (after `extends` has been merged)."""
    meters = values.get("meters")
    if values.get("rails") and meters and "jetson" not in meters:
        raise InputError(f"{where}: energy.rails: only the jetson meter reads rails; add \"jetson\" to "
                         f"energy.meters or remove energy.rails")
