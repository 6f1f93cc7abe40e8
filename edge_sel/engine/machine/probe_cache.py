"""What the layout and precision probes measured, kept per machine and model, and only when it
can be trusted.

A probe times a few steps. On a CPU that other work shares those steps can take several times
what the arithmetic costs, and a choice made from them (bf16 "0.18x fp32", an evaluation batch of
128 at 97,061 images/s against 1,035 at 256) would be kept for every later run. So:

- the key names the machine by its CPU model (/proc/cpuinfo), architecture and thread count, the
  torch version, and the model by its structure (every module's type and every parameter's shape)
  and by what trains (the update method and the parameters that require gradients): a cache copied
  from another device, or two models of equal size, never lends its timings;
- every probe records how many CPUs other work kept busy while it ran (the machine's busy time less
  this process's own, over the probe's wall time). A result taken with at least BUSY_CPUS of other
  work is kept as provisional: a later start under load reuses it, a quiet start measures again and
  replaces it;
- a run whose measured seconds per training step differ from the probe's by more than
  STEP_TIME_RATIO either way drops the entry, so the next start measures again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from edge_sel.core.count_keys import settings
from edge_sel.core.own_files import NotOurs, open_own, set_aside, write_own
from edge_sel.errors import parse_json
from edge_sel.data.folder import cache_dir
from edge_sel.threads import other_load, stated_load

BUSY_CPUS = 0.5          # CPUs of other work during a probe that make its result provisional
STEP_TIME_RATIO = 3.0    # a run's step time this far from the probe's (either way) measures again


def cpu_model() -> str:
    """The CPU's model as /proc/cpuinfo names it ("model name" on x86; implementer and part on Arm),
    read below EDGE_SEL_SYSFS_ROOT like every other device file; the architecture where unknown."""
    path = Path(os.environ.get("EDGE_SEL_SYSFS_ROOT") or "/") / "proc" / "cpuinfo"
    fields: dict = {}
    try:
        for line in path.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    named = fields.get("model name") or fields.get("hardware") or fields.get("model") or ""
    part = " ".join(f"{k} {fields[k]}" for k in ("cpu implementer", "cpu part") if k in fields)
    return " ".join(x for x in (named, part) if x) or platform.processor() or "unknown CPU"


def machine_key(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}|torch {torch.__version__}"
    return (f"{device.type}:{platform.machine()}:{cpu_model()}:{torch.get_num_threads()} threads"
            f"|torch {torch.__version__}")


def model_key(model: nn.Module, trains: str = "dense") -> str:
    """The model's structure and what trains, as a short digest: module types and their settings
    (core/count_keys.py) in order, every parameter's name, shape and whether it takes gradients, and
    the update method."""
    parts = [trains]
    parts += [f"{name}:{type(m).__name__}:{settings(m)}" for name, m in model.named_modules()]
    parts += [f"{name}:{tuple(p.shape)}:{p.requires_grad}" for name, p in model.named_parameters()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


MIN_WALL_S = 0.25   # shorter than this, busy times (counted in 10 ms ticks) say little: the start's sample


class OtherLoad:
    """CPUs that other work kept busy between entering and leaving: the machine's busy time less
    this process's own (every thread's), over the wall time; EDGE_SEL_OTHER_LOAD where the device
    states it, and the start's sample (edge_sel/threads.py) for a block too short to measure."""

    def __enter__(self) -> "OtherLoad":
        self.cpus = 0.0
        self._stated = stated_load()
        if self._stated is None:
            self._start = (time.perf_counter(), machine_busy_s(), own_busy_s())
        return self

    def __exit__(self, *exc) -> None:
        if self._stated is not None:
            self.cpus = self._stated
            return
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        if wall < MIN_WALL_S:
            self.cpus = other_load()
            return
        other = (machine_busy_s() - busy0) - (own_busy_s() - own0)
        self.cpus = max(0.0, other / wall)


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine has spent busy since boot."""
    import psutil
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def own_busy_s() -> float:
    """CPU seconds this process (all its threads) has used."""
    import psutil
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _path(name: str) -> Path:
    return cache_dir() / name


MAX_FILE_BYTES = 16 * 2**20     # a cache file larger than this is not read (measured again instead)


def read_entries(path: Path) -> dict:
    """The JSON object a cache file keeps ({} where there is none yet, or it does not read: measure
    again). Opened without following a link and without waiting (a FIFO named counts.json hung a
    run), read only where it is a regular file of at most MAX_FILE_BYTES that this user alone can write
    (core/own_files.py: another user's is set aside with one line)."""
    try:
        fd = open_own(path)
    except NotOurs as e:
        set_aside(str(e))
        return {}
    if fd is None:
        return {}
    try:
        if os.fstat(fd).st_size > MAX_FILE_BYTES:
            return {}
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        entries = parse_json(data.decode()) if len(data) <= MAX_FILE_BYTES else None
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    finally:
        os.close(fd)


def positive(value) -> bool:
    """A measured figure a cache entry may hold: a finite number above zero (a bool is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# Entries this process has kept (timings, counts): a memory plan refused after keeping some was refused
# beside what measuring them grew the process by, which a later start that reads them does not grow
# (engine/loop/step_memory.py).
kept_here = 0


def write_entries(path: Path, entries: dict, what: str = "the measurement") -> None:
    """`entries` kept in the cache file `path` (core/own_files.py write_own: no link followed, writable by
    this user alone); where it cannot be (a read-only home, another user's file that stays theirs), one
    line, and the run goes on without keeping them."""
    global kept_here
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_own(path, json.dumps(entries, indent=1).encode())
        kept_here += 1
    except OSError as e:                   # a read-only home must not stop a run
        warnings.warn(f"could not keep {what} in {path}: {e.strerror or e}; going on without keeping it")


def _read(name: str) -> dict:
    return read_entries(_path(name))


def _write(name: str, entries: dict) -> None:
    write_entries(_path(name), entries)


def usable_entry(name: str, key: str, load_now=None) -> dict | None:
    """What was measured earlier for `key`, if it may be reused now: a final entry always, a
    provisional one (measured under load) only while this start is under load too. `load_now` is
    called only for a provisional entry (sampling the load costs a quarter of a second); by default
    the load this process found at its start (edge_sel/threads.py)."""
    entry = _read(name).get(key)
    if not isinstance(entry, dict):
        return None
    if entry.get("provisional") and (load_now or other_load)() < BUSY_CPUS:
        return None                        # a quiet start: measure again
    return entry


def keep(name: str, key: str, entry: dict, load_cpus: float) -> dict:
    """Keeps `entry` (with the load it was measured under) for `key` and returns what is kept. A
    final entry another process kept meanwhile wins, so that runs started together on one device go
    on with one choice; a provisional one is replaced."""
    entries = _read(name)
    earlier = entries.get(key)
    if isinstance(earlier, dict) and not earlier.get("provisional"):
        return earlier
    entries[key] = {**entry, "other_load_cpus": round(load_cpus, 2), "provisional": load_cpus >= BUSY_CPUS}
    _write(name, entries)
    return entries[key]


def check_step_time(name: str, key: str, probed_s: float | None, measured_s: float | None) -> dict | None:
    """A run's measured seconds per training step against the probe's for the choice it ran with:
    beyond STEP_TIME_RATIO either way the entry is dropped and the next start measures again.
    Returns what was found (for the run's summary), or None when there is nothing to compare."""
    if not key or not probed_s or not measured_s:
        return None
    ratio = measured_s / probed_s
    stale = not 1 / STEP_TIME_RATIO <= ratio <= STEP_TIME_RATIO
    if stale:
        entries = _read(name)
        if entries.pop(key, None) is not None:
            _write(name, entries)
    return {"probed_s_per_step": probed_s, "measured_s_per_step": measured_s, "ratio": round(ratio, 3),
            "action": f"dropped: measured again at the next start (beyond {STEP_TIME_RATIO:g}x)" if stale
            else f"kept (within {STEP_TIME_RATIO:g}x)"}


def run_step_s(records: list[dict], batch_size: int) -> float | None:
    """Median seconds per training step over a run's epochs that ran plain steps (no scoring
    passes, no re-estimation: their time is not a step's), from each epoch's samples/s."""
    rates = sorted(r["samples_per_s"] for r in records
                   if r.get("samples_per_s") and not r.get("flops_scoring") and not r.get("flops_calibration"))
    return batch_size / rates[len(rates) // 2] if rates else None


def check_choices(records: list[dict], batch_size: int, layout, precision) -> dict:
    """The run's step time against each probe that measured the choice it ran with (summary.json's
    `probe_check`): a probe this far off is measured again at the next start."""
    measured = run_step_s(records, batch_size)
    found = {}
    for name, file, choice, arm in (("layout", "layout.json", layout, layout.memory_format),
                                    ("precision", "precision.json", precision, precision.train)):
        if choice.cache_key and choice.train_s_per_step.get(arm):
            outcome = check_step_time(file, choice.cache_key, choice.train_s_per_step[arm], measured)
            if outcome:
                found[name] = outcome
    return found
