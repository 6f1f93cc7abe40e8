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

def advised_huge(address):          # the mapping holding it asked for huge pages: `hg` in its VmFlags
    inside = False
    for line in open("/proc/self/smaps"):
        if "-" in line.split(" ", 1)[0] and not line.startswith("VmFlags"):
            lo, hi = (int(v, 16) for v in line.split(" ", 1)[0].split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags"):
            return "hg" in line.split()
    return None

def faults_of(repeats):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        floats(MiB).fill_(1.0)              # every page written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

said["off"] = [cpu_pool.keep(None), cpu_pool.counts(), faults_of(40)]
said["on"] = [cpu_pool.keep(0), faults_of(40), cpu_pool.counts()]
# A smaller block is cut from the start of a larger free range; freed, it joins the rest again.
a = floats(900 * KiB); del a
said["smaller"] = cpu_pool.counts()
# A free range of 3 MiB cut into three blocks, given back out of order: one range again, which serves
# 3 MiB from where it began.
cpu_pool.keep(MiB)
big = floats(3 * MiB); first = big.data_ptr(); del big
x, y, z = floats(MiB), floats(MiB), floats(MiB)
said["cut"] = [[t.data_ptr() - first for t in (x, y, z)], cpu_pool.counts()["kept"]]
del y, x, z
whole = floats(3 * MiB)
said["joined"] = [whole.data_ptr() == first, cpu_pool.counts()]
del whole
# 1 MiB of the 3 MiB range handed out, then 4 MiB asked: no range holds it, so pages go back from the
# end of the largest until the pool's pages and the new block reach no higher than the most asked at
# once (5 MiB) plus the slack (1 MiB): 1 MiB of the 2 MiB left free goes back, 1 MiB stays.
a = floats(MiB)
b = floats(4 * MiB)
said["trimmed"] = [cpu_pool.counts(), b.data_ptr() % (2 * MiB), advised_huge(b.data_ptr())]
c = floats(MiB)                               # the 1 MiB that stayed free
said["kept_part"] = c.data_ptr() - a.data_ptr()
del a, b, c
small = floats(32 * KiB); del small          # the heap's, never the pool's
said["small"] = cpu_pool.counts()
# A block handed out while the pool keeps and freed once it does not goes back to the system; a block
# torch mapped while the pool kept nothing never enters it.
held = floats(MiB)
cpu_pool.keep(None)
outside = floats(MiB)
del held
cpu_pool.keep(0)
del outside
said["off_again"] = cpu_pool.counts()
cpu_pool.keep(None)
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
print(json.dumps(said))
"""


def test_freed_blocks_are_kept_up_to_the_limit_and_reused_by_size(tmp_path):
    env = {**__import__("os").environ, "EDGE_SEL_CACHE": str(tmp_path / "cache"), "THP_MEM_ALLOC_ENABLE": "1"}
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
    assert said["smaller"] == {"kept": MiB, "peak": MiB, "high": MiB, "hits": 40, "misses": 1}
    assert said["cut"] == [[0, MiB, 2 * MiB], 0]
    assert said["joined"] == [True, {"kept": 0, "peak": 3 * MiB, "high": 3 * MiB, "hits": 44, "misses": 2}]
    # 4 MiB mapped afresh on a 2 MiB boundary with huge pages asked for, as torch maps such blocks where
    # THP_MEM_ALLOC_ENABLE=1 (huge_pages.py).
    assert said["trimmed"] == [{"kept": MiB, "peak": 5 * MiB, "high": 6 * MiB, "hits": 45, "misses": 3}, 0, True]
    assert said["kept_part"] == MiB
    assert said["small"]["kept"] == 6 * MiB and said["small"]["hits"] == 46
    assert said["off_again"] == {"kept": 0, "peak": 0, "high": 0, "hits": 47, "misses": 3}
    assert said["profiled"] == [2 ** 20, -2 ** 20] * 2 and said["profiled_counts"]["hits"] == 48
    # The same product and gradient without the pool, in this process.
    import torch
    torch.manual_seed(0)
    w = torch.randn(300, 300, requires_grad=True)
    for _ in range(3):
        (torch.randn(64, 300) @ w).square().sum().backward()
    assert said["grad"] == float(w.grad.abs().sum())


def test_without_a_compiler_a_budgeted_run_unmaps_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert cpu_pool.build(tmp_path / "pool.so") == "no C++ compiler (no-such-compiler) on the PATH"
    monkeypatch.setenv("CXX", "false")
    assert cpu_pool.build(tmp_path / "pool.so") == "false failed to build it: no message"
    assert not (tmp_path / "pool.so").exists() and list(tmp_path.iterdir()) == []
