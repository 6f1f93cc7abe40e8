"""The pool of freed CPU blocks (engine/machine/cpu_pool.py): built with the host's C++ compiler, in
front of torch's CPU allocator in a process of its own (installing it is for the process's life)."""
import json
import subprocess
import sys

from edge_sel.engine.machine import cpu_pool

# Sizes in bytes; each class a block lands in is 1/4 of a power of two (cpu_pool.cpp).
CHILD = r"""
import json, resource, torch
from edge_sel.engine.machine import cpu_pool, peak_memory
peak_memory.allocator_for_budget()              # blocks of 64 KiB and more mapped on their own, as under a budget
KiB, MiB = 1024, 2 ** 20
said = {}

def floats(n_bytes):
    return torch.empty(n_bytes // 4)

def faults_of(repeats):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        floats(MiB).fill_(1.0)              # every page written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

said["off"] = [cpu_pool.keep(None), cpu_pool.counts(), faults_of(40)]
said["on"] = [cpu_pool.keep(0), faults_of(40), cpu_pool.counts()]
# No slack: a block serves only a request of its own pages. A smaller one maps a block of its own, and
# the larger free one goes back, so the pool never holds more than the most asked of it at once.
a = floats(900 * KiB); del a
said["smaller"] = cpu_pool.counts()
# With 256 KiB of slack the 1 MiB block serves 900 KiB (124 KiB beyond what is asked).
cpu_pool.keep(256 * KiB)
a = floats(MiB); del a
a = floats(900 * KiB); del a
said["slack"] = cpu_pool.counts()
# Three blocks of 1 MiB free, then 2 MiB asked: the longest free go back until the pool's blocks and
# the new one reach no higher than the 3 MiB asked at once before; the newest free serves next.
cpu_pool.keep(0)
x, y, z = floats(MiB), floats(MiB), floats(MiB)
freed = [t.data_ptr() for t in (x, y, z)]
del x, y, z
w = floats(2 * MiB)
said["larger"] = cpu_pool.counts()
v = floats(MiB)
said["reused"] = freed.index(v.data_ptr())
del v, w
small = floats(32 * KiB); del small          # the heap's, never the pool's
said["small"] = cpu_pool.counts()
cpu_pool.keep(None)
a = floats(MiB); del a
said["off_again"] = cpu_pool.counts()
# torch's profiler sees the blocks it serves, mapped or reused, as it sees its own allocator's.
from torch.profiler import ProfilerActivity, profile
cpu_pool.keep(0)
with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    for _ in range(2):
        a = floats(MiB); del a
said["profiled"] = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
said["profiled_counts"] = cpu_pool.counts()
cpu_pool.keep(None)
# Training through it is training: a matrix product and its gradient as without it.
torch.manual_seed(0)
w = torch.randn(300, 300, requires_grad=True)
for _ in range(3):
    (torch.randn(64, 300) @ w).square().sum().backward()
said["grad"] = float(w.grad.abs().sum())
# A block handed out larger under one slack, still held when the slack drops to none (a training's
# state, then an evaluation): a block of the size asked still serves the next request of its size.
cpu_pool.keep(256 * KiB)
a = floats(MiB); del a
held = floats(900 * KiB)                      # in the 1 MiB block: 124 KiB beyond what it asked
cpu_pool.keep(0)
before = cpu_pool.counts()
for _ in range(3):
    b = floats(2 * MiB); del b
after = cpu_pool.counts()
said["held_larger"] = [after["hits"] - before["hits"], after["misses"] - before["misses"], after["kept"]]
print(json.dumps(said))
"""


def test_freed_blocks_are_kept_up_to_the_limit_and_reused_by_size(tmp_path):
    env = {**__import__("os").environ, "EDGE_SEL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    keeps, counts, faults_off = said["off"]
    assert keeps is False and counts == {"kept": 0, "peak": 0, "high": 0, "hits": 0, "misses": 0}
    # Unmapped, each MiB written faults its 256 pages in afresh; kept, the first one does.
    keeps, faults_on, counts = said["on"]
    assert keeps is True and faults_off >= 40 * 256 * 0.9 and faults_on < faults_off / 10
    MiB, KiB = 2 ** 20, 1024
    assert counts == {"kept": MiB, "peak": MiB, "high": MiB, "hits": 39, "misses": 1}
    assert said["smaller"] == {"kept": 900 * KiB, "peak": MiB, "high": MiB, "hits": 39, "misses": 2}
    assert said["slack"] == {"kept": MiB, "peak": MiB, "high": MiB, "hits": 40, "misses": 3}
    assert said["larger"] == {"kept": MiB, "peak": 3 * MiB, "high": 3 * MiB, "hits": 40, "misses": 7}
    assert said["reused"] == 2
    assert said["small"] == {"kept": 3 * MiB, "peak": 3 * MiB, "high": 3 * MiB, "hits": 41, "misses": 7}
    assert said["off_again"] == {"kept": 0, "peak": 0, "high": 0, "hits": 41, "misses": 7}
    assert said["profiled"] == [2 ** 20, -2 ** 20] * 2 and said["profiled_counts"]["hits"] == 42
    # The same product and gradient without the pool, in this process.
    import torch
    torch.manual_seed(0)
    w = torch.randn(300, 300, requires_grad=True)
    for _ in range(3):
        (torch.randn(64, 300) @ w).square().sum().backward()
    assert said["grad"] == float(w.grad.abs().sum())
    assert said["held_larger"] == [2, 1, 2 * MiB]


def test_without_a_compiler_a_budgeted_run_unmaps_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert cpu_pool.build(tmp_path / "pool.so") == "no C++ compiler (no-such-compiler) on the PATH"
    monkeypatch.setenv("CXX", "false")
    assert cpu_pool.build(tmp_path / "pool.so") == "false failed to build it: no message"
    assert not (tmp_path / "pool.so").exists() and list(tmp_path.iterdir()) == []
