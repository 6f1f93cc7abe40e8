"""The SEL stage table: which window of each class's easy-to-hard pool a stage trains on, for how
many epochs, and the validation accuracy that lets it advance.

Windows are given in percent of each class's pool. A compact string lists stages separated by
commas, each `START-END[:THRESHOLD[:EPOCHS[:CAP]]]` (THRESHOLD `-` means no gate; CAP is at most
that many samples per class), e.g. the default:

    0-25:0.30:10,20-50:0.45:10,40-65:0.58:10,60-82:0.68:10,78-100:0.76:10

A JSON or TOML file holds the same as `stages = [{start = 0, end = 25, threshold = 0.3,
epochs = 10, cap = 2000}, ...]` (JSON: {"stages": [...]} or a bare list).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edge_sel.errors import InputError, parse_json


@dataclass(frozen=True)
class StageSpec:
    start: float                    # percent of each class's pool where the window begins
    end: float                      # percent where it ends
    threshold: float | None = None  # validation accuracy needed to advance (None: no gate)
    epochs: int = 10
    cap: int | None = None          # at most this many samples per class
    dense: bool = False             # a dense warmup stage: no gradient mask, no loss-scaled lr

    def window(self, pool_size: int) -> tuple[int, int]:
        """[lo, hi) positions of this stage's window in a class pool of `pool_size` samples."""
        lo = int(self.start / 100 * pool_size)
        hi = int(self.end / 100 * pool_size)
        if self.cap is not None:
            hi = min(hi, lo + self.cap)
        if hi <= lo and lo < pool_size:
            hi = lo + 1          # a tiny pool still contributes one sample
        return lo, min(hi, pool_size)


# The SEL benchmark's stage table: sample range in percent of the difficulty order, sparsity, epochs.
DEFAULT_STAGES = "0-25:0.30:10,20-50:0.45:10,40-65:0.58:10,60-82:0.68:10,78-100:0.76:10"


def _check(spec: StageSpec, where: str) -> StageSpec:
    if not 0 <= spec.start < spec.end <= 100:
        raise InputError(f"--stages: {where}: need 0 <= start < end <= 100 (percent), got {spec.start}-{spec.end}")
    if spec.threshold is not None and not 0 <= spec.threshold <= 1:
        raise InputError(f"--stages: {where}: threshold must be an accuracy in [0, 1], got {spec.threshold}")
    if spec.epochs < 1:
        raise InputError(f"--stages: {where}: epochs must be >= 1, got {spec.epochs}")
    if spec.cap is not None and spec.cap < 1:
        raise InputError(f"--stages: {where}: cap must be >= 1, got {spec.cap}")
    return spec


def _parse_entry(text: str) -> StageSpec:
    parts = text.strip().split(":")
    try:
        start, end = (float(v) for v in parts[0].split("-"))
        threshold = None if len(parts) < 2 or parts[1] in ("", "-") else float(parts[1])
        epochs = int(parts[2]) if len(parts) > 2 and parts[2] else 10
        cap = int(parts[3]) if len(parts) > 3 and parts[3] not in ("", "-") else None
        if len(parts) > 4:
            raise ValueError
    except ValueError:
        raise InputError(f"--stages: cannot read {text.strip()!r}; expected START-END[:THRESHOLD[:EPOCHS[:CAP]]]"
                         ) from None
    return _check(StageSpec(start, end, threshold, epochs, cap), repr(text.strip()))


def _from_mapping(item, where: str) -> StageSpec:
    if not isinstance(item, dict) or "start" not in item or "end" not in item:
        raise InputError(f"--stages: {where}: each stage needs 'start' and 'end' (percent)")
    unknown = set(item) - {"start", "end", "threshold", "epochs", "cap"}
    if unknown:
        raise InputError(f"--stages: {where}: unknown keys {sorted(unknown)}")
    try:
        spec = StageSpec(float(item["start"]), float(item["end"]),
                         None if item.get("threshold") is None else float(item["threshold"]),
                         int(item.get("epochs", 10)), None if item.get("cap") is None else int(item["cap"]))
    except (TypeError, ValueError):
        raise InputError(f"--stages: {where}: start/end/threshold must be numbers, epochs/cap integers") from None
    return _check(spec, where)


def _parse_file(path: Path) -> list[StageSpec]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else parse_json(text)
    except OSError as e:
        raise InputError(f"--stages {path}: cannot read ({e.strerror})") from None
    except (ValueError, tomllib.TOMLDecodeError, RecursionError) as e:    # nesting too deep for the parser
        raise InputError(f"--stages {path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({e})") from None
    items = data.get("stages") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise InputError(f"--stages {path}: expected a non-empty list of stages")
    return [_from_mapping(item, f"{path} stage {i + 1}") for i, item in enumerate(items)]


def parse_stages(text: str | None) -> list[StageSpec]:
    """The stage table from a compact string or a .json/.toml file (None: the seed's table)."""
    text = DEFAULT_STAGES if text is None else str(text)
    if text.endswith((".json", ".toml")) or Path(text).is_file():
        return _parse_file(Path(text))
    entries = [e for e in text.split(",") if e.strip()]
    if not entries:
        raise InputError("--stages: no stages given")
    return [_parse_entry(e) for e in entries]


def format_stages(stages: list[StageSpec]) -> str:
    """The compact form of a table (what presets store in the config)."""
    def num(v):
        return f"{v:g}"
    return ",".join(f"{num(s.start)}-{num(s.end)}:{'-' if s.threshold is None else num(s.threshold)}:{s.epochs}"
                    + (f":{s.cap}" if s.cap is not None else "") for s in stages)


def allocate_epochs(table: list[int], budget: int) -> list[int]:
    """Epochs for each remaining stage when `budget` epochs are left.

    Rule: a budget that covers the table keeps the table's epochs. A smaller budget is shared in
    proportion to the table (largest remainder), with at least one epoch per stage so every stage
    is visited; only a budget smaller than the number of stages leaves the last stages unvisited.
    """
    total = sum(table)
    if budget >= total:
        return list(table)
    n = len(table)
    if budget <= n:
        return [1] * budget + [0] * (n - budget)
    raw = [budget * t / total for t in table]
    alloc = [max(1, math.floor(r)) for r in raw]
    while sum(alloc) > budget:   # the floor of one epoch may overshoot: take from the largest
        i = max((j for j in range(n) if alloc[j] > 1), key=lambda j: (alloc[j] - raw[j], j))
        alloc[i] -= 1
    order = sorted(range(n), key=lambda j: (-(raw[j] - alloc[j]), j))
    k = 0
    while sum(alloc) < budget:
        alloc[order[k % n]] += 1
        k += 1
    return alloc
