"""Cost of the energy sampler thread, as a percentage of one CPU core.

Runs a fixed single-threaded CPU workload alternately without and with the sampler running
(default 10 Hz) in one process, and compares the process CPU time of the two: the difference
is what the sampler costs (its reads plus any slowdown of the workload). On a busy shared
machine that difference is noisier than the effect, so the sampler thread's own CPU clock
(everything it does: wake-ups, reads, bookkeeping) is reported as well.

    python benchmarks/bench_sampler.py                   # the meters this machine has
    python benchmarks/bench_sampler.py --tree orin-nano  # a fake Jetson tree: rails + thermal zones
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # fake_sysfs builders for --tree

from edge_sel.energy import open_meter  # noqa: E402


def workload(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += (i * i) % 7
    return total


def calibrate(seconds: float) -> int:
    probe = 200_000
    start = time.process_time()
    workload(probe)
    per_iteration = (time.process_time() - start) / probe
    return max(probe, int(seconds / per_iteration))


def build_tree(kind: str) -> str | None:
    if kind == "real":
        return None
    import fake_sysfs

    root = Path(tempfile.mkdtemp(prefix="edge-sel-bench-"))
    if kind == "orin-nano":
        fake_sysfs.orin_nano(root)
        for i in range(4, 10):  # a real Orin lists about ten zones
            fake_sysfs.thermal_zone(root, i, f"zone{i}-thermal", 40000 + i)
    elif kind == "intel-laptop":
        fake_sysfs.intel_laptop_rapl(root)
        fake_sysfs.thermal_zone(root, 0, "x86_pkg_temp", 55000)
        fake_sysfs.thermal_zone(root, 1, "acpitz", 45000)
    return str(root)


def timed_run(iterations: int, meter=None) -> tuple[float, float, float]:
    """(process CPU s, wall s, sampler thread CPU s) of the workload, with the sampler
    running if a meter is given."""
    thread_cpu = 0.0
    if meter is not None:
        meter.start()
        clock_id = time.pthread_getcpuclockid(meter._thread.ident)
        thread_start = time.clock_gettime(clock_id)
    wall, cpu = time.perf_counter(), time.process_time()
    workload(iterations)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if meter is not None:
        thread_cpu = time.clock_gettime(clock_id) - thread_start
        meter.close()
    return cpu, wall, thread_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one workload run")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (without, with)")
    parser.add_argument("--interval", type=float, default=0.1, help="sampler interval in seconds")
    parser.add_argument("--tree", choices=["real", "orin-nano", "intel-laptop"], default="real")
    args = parser.parse_args()

    root = build_tree(args.tree)
    probe = open_meter(root=root, interval_s=args.interval)
    print(f"meters: {probe.source} ({probe.method}); components {probe.component_names}; "
          f"temperature sensors {len(probe.describe()['temperature_sensors'])}; tree {args.tree}")
    probe.close()

    iterations = calibrate(args.seconds)
    timed_run(iterations)  # warm up: the first run is often slower (frequency, caches)
    differences, thread_shares = [], []
    for round_ in range(args.rounds):
        runs = {}
        # alternate the order so that drift in machine load does not favour one side
        for with_sampler in ((False, True) if round_ % 2 == 0 else (True, False)):
            meter = open_meter(root=root, interval_s=args.interval) if with_sampler else None
            runs[with_sampler] = timed_run(iterations, meter)
        (cpu_without, _, _), (cpu_with, wall_with, thread_cpu) = runs[False], runs[True]
        differences.append((cpu_with - cpu_without) / wall_with)
        thread_shares.append(thread_cpu / wall_with)
        print(f"round {round_ + 1}: workload CPU {cpu_without:.3f} s without, {cpu_with:.3f} s with "
              f"the sampler; sampler thread CPU {thread_cpu * 1e3:.2f} ms in {wall_with:.2f} s")

    print(f"sampler cost at {1 / args.interval:g} Hz, process CPU with minus without: "
          f"{statistics.median(differences) * 100:.3f} % of one core (median of {args.rounds} pairs, "
          f"spread {min(differences) * 100:.2f} .. {max(differences) * 100:.2f})")
    print(f"sampler thread's own CPU time: {statistics.median(thread_shares) * 100:.3f} % of one core "
          f"(median; spread {min(thread_shares) * 100:.3f} .. {max(thread_shares) * 100:.3f})")


if __name__ == "__main__":
    main()
