"""Transparent huge pages for torch's large CPU blocks, chosen before torch loads.

torch maps a CPU block of 2 MiB or more on a 2 MiB boundary and asks the kernel for huge pages for it
(madvise) where `THP_MEM_ALLOC_ENABLE=1`; it reads the variable once, at its first CPU allocation,
so the command line sets it before torch is imported, unless the user set it. A huge page is faulted
in at once where 512 small pages each take a fault, so a step that maps its large tensors afresh (a
budgeted run below HEAP_SLACK: engine/machine/peak_memory.py) faults far less. Measured on two shared AMD
EPYC cores, one thread, 500 images at batch 32, one epoch, the same set without and with
(`benchmarks/bench_budget_time.py`'s child, docs/memory-budget.md):

| run | training s without / with | measured training MiB without / with |
|---|---|---|
| Lite0 96 px, the classifier, no budget | 4.47 / 3.71 | 212.2 / 243.6 |
| Lite0 96 px, the classifier, 123.9 MiB (blocks of 64 KiB and more mapped) | 12.47 / 7.71 | 100.3 / 96.4 |
| mobilenetv2 32 px, everything, no budget | 4.63 / 4.17 | 311.8 / 322.7 |
| mobilenetv2 32 px, everything, 150 MiB (the same) | 21.20 / 15.63 | 119.1 / 115.5 |

A budgeted run that maps its large blocks afresh each step trains 1.4-1.6x as fast at the same
measured peak; an unbudgeted one is 10-17% faster and measures up to 15% more (a huge page is
resident whole). Where the kernel's THP setting is `never` the advice does nothing."""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "THP_MEM_ALLOC_ENABLE"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_state: dict = {}


def kernel_setting(path: Path = THP_ENABLED) -> str | None:
    """The kernel's THP mode (`always`, `madvise` or `never`: the bracketed word), None where unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def large_blocks_in_huge_pages(environ=None, setting: str | None = None) -> dict:
    """Sets THP_MEM_ALLOC_ENABLE=1 unless the variable is set or the kernel's mode is `never`; returns
    (and keeps for describe) what is in force and why. Call before torch is imported."""
    environ = os.environ if environ is None else environ
    setting = kernel_setting() if setting is None else setting
    if VARIABLE in environ:
        why = f"{VARIABLE}={environ[VARIABLE]} as set"
    elif setting in (None, "never"):
        why = f"the kernel's transparent huge pages are {setting or 'unknown'}: not asked for"
    else:
        environ[VARIABLE] = "1"
        why = f"asked for torch's CPU blocks of 2 MiB and more (the kernel's mode: {setting})"
    _state.update(on=in_force(environ, setting), kernel=setting, why=why)
    return dict(_state)


def describe() -> dict:
    """What this process chose (the Python API chooses nothing: torch's own, read from the variable)."""
    if _state:
        return dict(_state)
    setting = kernel_setting()
    return {"on": in_force(os.environ, setting), "kernel": setting,
            "why": "not chosen here (the Python API): the environment's"}


def in_force(environ, setting: str | None) -> bool:
    """Whether torch asks for huge pages (the variable is 1) and the kernel may give them."""
    return environ.get(VARIABLE, "0").strip() == "1" and setting not in (None, "never")
