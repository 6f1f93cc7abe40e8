"""Whether this process may measure what a budgeted plan needs (steps counted on the meta device, step
costs timed), or must read it from the device's caches.

Measuring grows the process that does it: timed steps load kernels and caches for shapes the run never
takes, and they stay beside the run's steps (Lite0 at 96 px under 1/4 of full FT's peak: 40.0 MiB of
growth before the first step on a new device against 18.5 where the counts were read, and 124.4 MiB of
training measured against a 123.9 MiB budget). So a run plans with measuring forbidden; what its
caches lack raises Unmeasured, and a short child process measures it (engine/loop/measure_child.py),
planning as the run would beside the run's own growth. The child is the only place that measures."""

from __future__ import annotations

import contextlib

_forbidden = [False]
# In the measuring child: the growth (MiB) of the run it measures for, which its plan fits beside
# instead of its own (engine/loop/first_use.py grown_mb).
child_growth_mb: list[float | None] = [None]


class Unmeasured(Exception):
    """A count or a step cost the plan needs is not in the device's caches, and this process may not
    measure it."""


class MeasuredOnly(Exception):
    """Raised in the measuring child once everything its plan reads has been measured and kept."""


@contextlib.contextmanager
def forbidden():
    """Inside, need() raises Unmeasured; as it was afterwards."""
    before, _forbidden[0] = _forbidden[0], True
    try:
        yield
    finally:
        _forbidden[0] = before


def need(what: str) -> None:
    """Called before measuring `what` (a count, step costs): raises Unmeasured where it is forbidden."""
    if _forbidden[0]:
        raise Unmeasured(what)


def in_child() -> bool:
    return child_growth_mb[0] is not None
