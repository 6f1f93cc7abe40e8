"""Threads and waiting for a CPU that other work shares (a camera pipeline, an inference service).

OpenMP's threads spin while they wait for work by default. On a machine of its own that shaves
microseconds off each parallel region; beside other busy processes the spinning threads take the
cores the other work needs, the work they wait for is descheduled, and a digits fine-tune here ran
7-70 times its quiet time while its CPU-time estimate grew with the contention. So:

- waiting is passive (`OMP_WAIT_POLICY=PASSIVE`) when other work keeps at least half a CPU busy
  as the command starts, and OpenMP's own policy otherwise, unless the user set the variable: set
  by the command line before torch is imported, since OpenMP reads it once, when it loads.
  Measured on a 2-core CPU, the same digits fine-tune (2 threads): quiet 0.56 s spinning against
  1.03 s passive (waking sleeping threads costs more than these small layers' work), beside one
  busy process 10.5 s spinning against 0.72 s passive. So a quiet start keeps spinning and load
  that arrives later is not seen; where the CPU is always shared (a device's nightly service), set
  OMP_WAIT_POLICY=PASSIVE in its environment (deploy/systemd/finetune.env.example does);
- the number of intra-op threads is what the CPU has free when the command starts: the CPUs this
  process may run on (its affinity set), less what other work keeps busy on those CPUs (their use
  over a quarter of a second while this process waits; the load average lags by a minute and
  counted a run that had just ended), at least one, and never more than a cgroup CPU quota allows
  (`cpu.max`, or cgroup v1's CFS quota: a container limited to 1.5 CPUs that ran 8 threads was
  throttled every period); `--threads` and a device profile's `cpu_threads` win, and so does
  `OMP_NUM_THREADS` where it is set (the user's or a launcher's count: torchrun gives each rank one).

A device that knows what its other work takes (a camera pipeline on one core) can say so in
EDGE_SEL_OTHER_LOAD (CPUs, e.g. 1 or 0.5): no sampling then, and every choice that depends on the
load (waiting, threads, whether a probe's result is kept as final) follows the stated figure.

What was chosen and why is stated in every run's config.json and summary.json (`threads`). A
resumed run keeps the count its config.json records unless this command was given one: a CPU's
float sums depend on how work is split between threads, so only the same count resumes exactly.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

WAIT_ENV = "OMP_WAIT_POLICY"
_chosen: dict = {}


BUSY_FOR_PASSIVE = 0.5     # CPUs of other work at the start that make waiting passive
_sampled: list[float] = []


def passive_waiting(environ=None, load: float | None = None) -> str:
    """OMP_WAIT_POLICY=PASSIVE when other work keeps the CPU busy now (unless the variable is set);
    returns the policy in force, or "default" for OpenMP's own."""
    environ = os.environ if environ is None else environ
    if WAIT_ENV not in environ and (other_load() if load is None else load) >= BUSY_FOR_PASSIVE:
        environ[WAIT_ENV] = "PASSIVE"
    return environ.get(WAIT_ENV, "default")


def waiting_is_passive(environ=None) -> bool:
    """Whether OpenMP's threads wait passively in this process (ONNX Runtime's own thread pool is
    told to do the same: it spins between runs by default)."""
    return (os.environ if environ is None else environ).get(WAIT_ENV, "").strip().upper() == "PASSIVE"


ORT_SPINNING = "session.intra_op.allow_spinning"


def ort_waits_like_openmp(options):
    """ONNX Runtime session options whose intra-op threads stop spinning where OpenMP's wait
    passively (ORT's pool spins between runs whatever OMP_WAIT_POLICY says); returns `options`."""
    if waiting_is_passive():
        options.add_session_config_entry(ORT_SPINNING, "0")
    return options


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):     # macOS has no affinity call
        return os.cpu_count() or 1


SAMPLE_S = 0.25
LOAD_ENV = "EDGE_SEL_OTHER_LOAD"


def stated_load(environ=None) -> float | None:
    """EDGE_SEL_OTHER_LOAD: the CPUs other work keeps busy, as the device's settings state it."""
    text = (os.environ if environ is None else environ).get(LOAD_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        from edge_sel.errors import InputError
        raise InputError(f"environment variable {LOAD_ENV}={text!r}: give the CPUs other work keeps busy, "
                         "a number >= 0 (e.g. 0, 0.5 or 1)")
    return value


def other_load() -> float:
    """CPUs kept busy by other work as this process starts: EDGE_SEL_OTHER_LOAD where set, else the
    busy share of the CPUs this process may run on over SAMPLE_S seconds, in CPUs, sampled once per
    process (the waiting policy and the thread count share it). Work on CPUs outside the affinity
    set takes nothing from this process's."""
    stated = stated_load()
    if stated is not None:
        return stated
    if not _sampled:
        import psutil
        per_cpu = psutil.cpu_percent(interval=SAMPLE_S, percpu=True)
        mine = affinity()
        busy = per_cpu if mine is None else [per_cpu[i] for i in sorted(mine) if i < len(per_cpu)]
        _sampled.append(sum(busy) / 100)
    return _sampled[0]


def affinity() -> set[int] | None:
    """The CPUs this process may run on, or None where the system cannot say (macOS)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs a cgroup quota lets this process use (the tightest over its cgroup and the cgroups
    above it; cgroup v2's cpu.max, or v1's cpu.cfs_quota_us over cpu.cfs_period_us), or None when
    no quota applies or none can be read."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, where = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            places, read = [root], _cpu_max
        elif "cpu" in controllers.split(","):
            places, read = [root / controllers, root / "cpu"], _cfs_quota
        else:
            continue
        for base in places:
            here = base / where.strip("/")
            for d in [here, *here.parents]:
                if d == base.parent:
                    break
                limit = read(d)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def _cpu_max(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 and int(quota) > 0 else None
    except (OSError, ValueError):
        return None


def _cfs_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


OMP_THREADS_ENV = "OMP_NUM_THREADS"


def omp_threads(environ=None) -> int | None:
    """OMP_NUM_THREADS as a count when it is a positive integer (OpenMP and torch ignore other values);
    digits outside ASCII (\u00b2, \u0663), which Python would read as a number and OpenMP does not, are
    refused in one line."""
    text = (os.environ if environ is None else environ).get(OMP_THREADS_ENV, "").strip()
    if not text.isascii():
        from edge_sel.errors import InputError
        raise InputError(f"environment variable {OMP_THREADS_ENV}={text!r}: OpenMP reads a count in ASCII "
                         "digits (e.g. 4); set one or unset the variable")
    return int(text) if text.isdigit() and int(text) > 0 else None


def choose_threads(requested: int | None = None, cpus: int | None = None, load: float | None = None,
                   source: str = "--threads", quota: float | None = ...) -> tuple[int, str]:
    """(threads, why): `requested` when given, else OMP_NUM_THREADS where set, else the CPUs free of
    other work, at least one and within a cgroup CPU quota (`quota`, CPUs; read when not given)."""
    if requested:
        return int(requested), f"{source} {requested}"
    omp = omp_threads()
    if omp is not None:
        return omp, f"{OMP_THREADS_ENV} {omp}"
    quota = cgroup_cpu_quota() if quota is ... else quota
    cpus = usable_cpus() if cpus is None else cpus
    stated = load is None and stated_load() is not None
    load = other_load() if load is None else load
    free = max(1, min(cpus, int(cpus - load + 0.5)))
    where = f"stated in {LOAD_ENV}" if stated else "at the start"
    why = f"{cpus} CPUs, {load:.2f} busy with other work {where}: {free} free"
    if quota is not None and free > max(1, int(quota + 0.5)):
        free = max(1, int(quota + 0.5))
        why += f", {free} within the cgroup's CPU quota of {quota:g}"
    return free, why


def apply_threads(requested: int | None = None, source: str = "--threads", **probe) -> dict:
    """Choose the threads (choose_threads), give them to torch, and remember what was chosen for
    the run's records; returns that record."""
    import torch
    count, why = choose_threads(requested, source=source, **probe)
    torch.set_num_threads(count)
    _chosen.clear()
    _chosen.update({"count": count, "why": why, "wait_policy": os.environ.get(WAIT_ENV, "OpenMP's default (spinning)")})
    _requested[:] = [bool(requested) or omp_threads() is not None]
    return dict(_chosen)


_requested: list[bool] = []


def keep_recorded(recorded) -> int | None:
    """A resumed run's threads: the count its config.json recorded (`recorded`: that `threads`
    record), unless this process was given a count (--threads, a profile's cpu_threads,
    OMP_NUM_THREADS); returns
    torch's count before, for the caller to restore, or None when nothing changed."""
    import torch
    count = recorded.get("count") if isinstance(recorded, dict) else None
    if any(_requested) or not isinstance(count, int) or isinstance(count, bool) or count < 1 \
            or count == torch.get_num_threads():
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    _chosen.update({"count": count, "why": f"kept from the run's start ({recorded.get('why')}): a resumed run "
                    "sums as an unbroken one only on the same thread count",
                    "wait_policy": os.environ.get(WAIT_ENV, "OpenMP's default (spinning)")})
    return before


def describe() -> dict:
    """What this process chose (empty when it never chose: the Python API leaves torch's own)."""
    if _chosen:
        return dict(_chosen)
    torch = __import__("sys").modules.get("torch")
    return {"count": torch.get_num_threads() if torch else None, "why": "torch's default (not chosen here)",
            "wait_policy": os.environ.get(WAIT_ENV, "OpenMP's default (spinning)")}


@contextlib.contextmanager
def torch_threads(count: int | None):
    """torch's intra-op threads set to `count` for the block, restored afterwards (unchanged when
    None)."""
    if count is None:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
