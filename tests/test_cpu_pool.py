"""The pool of freed CPU blocks (engine/machine/cpu_pool.py): built with the host's C++ compiler, in
front of torch's CPU allocator in a process of its own (installing it is for the process's life); kept
in a folder of the cache only this user can write, and loaded only as it was built."""
import ctypes
import functools
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

from edge_sel.engine.machine import cpu_pool

REAL_COMPILE = getattr(cpu_pool, "compile_to", None)

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
    # Built in a folder of the cache only this user can write, its digest recorded beside it.
    folder = tmp_path / "cache" / "lib"
    name = cpu_pool.library_name()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == [f"{name}.json", f"{name}.so"]
    recorded = json.loads((folder / f"{name}.json").read_text())["sha256"]
    assert recorded == hashlib.sha256((folder / f"{name}.so").read_bytes()).hexdigest()


# A stand-in for the pool's library, built once with plain C: the pool's functions, doing nothing,
# and a constructor that says it ran (to the file EDGE_SEL_TEST_LOADED names). Built with -DPLANTED,
# it is another user's library: the constructor writes EDGE_SEL_TEST_PLANTED instead.
STAND_IN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stddef.h>
#ifdef PLANTED
#define MARKER "EDGE_SEL_TEST_PLANTED"
#else
#define MARKER "EDGE_SEL_TEST_LOADED"
#endif
__attribute__((constructor)) static void ran(void) {
    const char *path = getenv(MARKER);
    FILE *f = path ? fopen(path, "a") : NULL;
    if (f) { fputs("ran\n", f); fclose(f); }
}
void edge_sel_pool_keep(int keep, size_t slack) {}
size_t edge_sel_pool_kept(void) { return 0; }
size_t edge_sel_pool_peak(void) { return 0; }
size_t edge_sel_pool_high(void) { return 0; }
uint64_t edge_sel_pool_hits(void) { return 0; }
uint64_t edge_sel_pool_misses(void) { return 0; }
int edge_sel_pool_install(void) { return 1; }
"""


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """(the library a build makes, a planted one), compiled once per session with `cc`."""
    folder = tmp_path_factory.mktemp("stand-ins")
    (folder / "pool.c").write_text(STAND_IN)
    made = []
    for name, flags in (("built.so", []), ("planted.so", ["-DPLANTED"])):
        subprocess.run(["cc", "-shared", "-fPIC", *flags, str(folder / "pool.c"), "-o", str(folder / name)], check=True)
        made.append((folder / name).read_bytes())
    return made


# The highest descriptor a library was loaded through (/proc/self/fd/N) by an earlier test: glibc's
# dlopen hands back a library it loaded under the same name without looking at the file again.
_highest_loaded = [0]


@pytest.fixture
def pool(tmp_path, monkeypatch, stand_ins):
    """library() as in a fresh process, with its cache under tmp_path and a build that writes the
    stand-in; `pool.compiled` counts builds, `pool.lines(name)` how often a constructor wrote to
    tmp_path/name ("loaded": the stand-in built, "planted": the planted one)."""
    built, planted = stand_ins
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGE_SEL_CPU_POOL", raising=False)
    monkeypatch.setenv("EDGE_SEL_TEST_LOADED", str(tmp_path / "loaded"))
    monkeypatch.setenv("EDGE_SEL_TEST_PLANTED", str(tmp_path / "planted"))
    state = type("Pool", (), {})()
    state.compiled, names = 0, []

    def compile_to(output):
        state.compiled += 1
        with open(output, "wb") as f:
            f.write(built)

    def fresh():                    # as in the next process
        monkeypatch.setattr(cpu_pool, "library", functools.cache(cpu_pool.library.__wrapped__))
        monkeypatch.setattr(cpu_pool, "_unavailable", [])
    fresh()
    monkeypatch.setattr(cpu_pool, "_slack", [None])
    monkeypatch.setattr(cpu_pool, "compile_to", compile_to, raising=False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, real=ctypes.CDLL, **k:
                        names.append(name) or real(name, *a, **k))
    state.compile_to, state.planted, state.folder, state.fresh = compile_to, planted, tmp_path / "cache" / "lib", fresh
    state.lines = lambda name: (tmp_path / name).read_text().count("ran") if (tmp_path / name).exists() else 0
    held = []                       # descriptors held open so that this test loads through a new one
    while (fd := os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)) <= _highest_loaded[0]:
        held.append(fd)
    os.close(fd)
    yield state
    for fd in held:
        os.close(fd)
    _highest_loaded[0] = max([_highest_loaded[0]] + [int(n.rsplit("/", 1)[1]) for n in names
                                                      if str(n).startswith("/proc/self/fd/")])


def plant(path, data, mode=0o700):
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(data)
    path.chmod(mode)


def record(folder, data):
    """A digest record for `data`, as a build writes it."""
    (folder / f"{cpu_pool.library_name()}.json").write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest()}))


def test_the_pool_is_built_its_digest_recorded_and_loaded_once_checked(pool, stand_ins):
    pool.folder.mkdir(parents=True, mode=0o700)
    stale = pool.folder / "cpu-pool-0123456789abcdef.so"     # built from another source or torch
    plant(stale, b"old")
    assert cpu_pool.library() is not None and cpu_pool.unavailable() is None
    assert (pool.compiled, pool.lines("loaded")) == (1, 1)
    name = cpu_pool.library_name()
    assert sorted(p.name for p in pool.folder.iterdir()) == [f"{name}.json", f"{name}.so"]
    assert stat.S_IMODE(pool.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((pool.folder / f"{name}.so").stat().st_mode) == 0o500
    recorded = json.loads((pool.folder / f"{name}.json").read_text())
    assert recorded == {"sha256": hashlib.sha256(stand_ins[0]).hexdigest()}
    # The next process loads what was built, checked, without building it again (in this one the same
    # file is already mapped, so its constructor does not run twice).
    pool.fresh()
    assert cpu_pool.library() is not None and cpu_pool.unavailable() is None and pool.compiled == 1


def test_a_library_planted_at_the_old_cache_path_is_never_loaded(pool, monkeypatch):
    """The pool was loaded from the cache itself, by a name anyone could predict: another user who
    can write the cache ran code in every budgeted run."""
    plant(cpu_pool.cache_dir() / cpu_pool.library_path().name, pool.planted)
    # Without a compiler the pool is refused and the run unmaps, saying why; what was planted never runs.
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(cpu_pool, "compile_to", REAL_COMPILE, raising=False)
    assert cpu_pool.library() is None and cpu_pool.unavailable() == "no C++ compiler (no-such-compiler) on the PATH"
    assert pool.lines("planted") == 0
    # With one, the pool is built in its own folder, and that is what loads.
    pool.fresh()
    monkeypatch.setattr(cpu_pool, "compile_to", pool.compile_to)
    assert cpu_pool.library() is not None and (pool.compiled, pool.lines("loaded"), pool.lines("planted")) == (1, 1, 0)


def _wrong_digest(folder, so, planted):
    plant(so, planted)
    record(folder, b"what was built")


def _library_a_link(folder, so, planted):
    plant(folder.parent / "elsewhere.so", planted)
    so.symlink_to(folder.parent / "elsewhere.so")
    record(folder, planted)


def _record_a_link(folder, so, planted):
    plant(so, planted)
    (folder.parent / "elsewhere.json").write_text(json.dumps({"sha256": hashlib.sha256(planted).hexdigest()}))
    (folder / f"{cpu_pool.library_name()}.json").symlink_to(folder.parent / "elsewhere.json")


def _record_missing(folder, so, planted):
    plant(so, planted)


def _record_too_long(folder, so, planted):
    plant(so, planted)
    (folder / f"{cpu_pool.library_name()}.json").write_text(
        json.dumps({"sha256": hashlib.sha256(planted).hexdigest(), "pad": "x" * 5000}))


def _record_a_fifo(folder, so, planted):
    plant(so, planted)
    os.mkfifo(folder / f"{cpu_pool.library_name()}.json")


def _library_writable_by_others(folder, so, planted):
    plant(so, planted, mode=0o777)
    record(folder, planted)


KEPT = {
    _wrong_digest: "{so}: SHA-256 {planted:.12}... is not the {built:.12}... recorded when built",
    _library_a_link: "{so}: a link, not a file",
    _record_a_link: "{json}: a link, not a file",
    _record_missing: "{json}: missing, so {so.name} is not known to be what was built",
    _record_too_long: "{json}: more than 4096 bytes",
    _record_a_fifo: "{json}: not a regular file",
    _library_writable_by_others: "{so}: writable by group or others (mode 777)",
}


@pytest.mark.parametrize("planting", KEPT, ids=lambda f: f.__name__.strip("_"))
def test_a_library_kept_in_the_pools_folder_loads_only_as_built_or_is_built_again(pool, monkeypatch, planting):
    pool.folder.mkdir(parents=True, mode=0o700)
    so, name = cpu_pool.library_path(), cpu_pool.library_name()
    planting(pool.folder, so, pool.planted)
    why = KEPT[planting].format(so=so, json=pool.folder / f"{name}.json",
                                planted=hashlib.sha256(pool.planted).hexdigest(),
                                built=hashlib.sha256(b"what was built").hexdigest())
    # Where it cannot be built again, the pool is refused, saying both why.
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(cpu_pool, "compile_to", REAL_COMPILE, raising=False)
    assert cpu_pool.library() is None
    assert cpu_pool.unavailable() == f"no C++ compiler (no-such-compiler) on the PATH (the one kept was refused: {why})"
    # Where it can, it is built over what was there, and that is what loads.
    pool.fresh()
    monkeypatch.setattr(cpu_pool, "compile_to", pool.compile_to)
    assert cpu_pool.library() is not None and cpu_pool.unavailable() is None
    assert (pool.compiled, pool.lines("loaded"), pool.lines("planted")) == (1, 1, 0)
    assert stat.S_ISREG(so.lstat().st_mode) and json.loads((pool.folder / f"{name}.json").read_text())["sha256"] == \
        hashlib.sha256(so.read_bytes()).hexdigest()


def _folder_a_link(folder):
    os.rename(folder, folder.parent / "elsewhere")
    folder.symlink_to(folder.parent / "elsewhere")
    return f"{folder}: a link, not a folder"


def _folder_writable_by_group(folder):
    folder.chmod(0o770)
    return f"{folder}: writable by group or others (mode 770)"


def _folder_writable_by_others(folder):
    folder.chmod(0o703)
    return f"{folder}: writable by group or others (mode 703)"


def _folder_another_users(folder):         # this process's user made another one (the test's os.geteuid)
    uid = os.geteuid()
    return f"{folder}: owned by user {uid}, not by this user ({uid + 1})"


def _folder_a_file(folder):
    os.rename(folder, folder.parent / "elsewhere")
    folder.write_bytes(b"")
    return f"{folder}: not a folder"


FOLDERS = [_folder_a_link, _folder_writable_by_group, _folder_writable_by_others, _folder_another_users, _folder_a_file]


@pytest.mark.parametrize("change", FOLDERS, ids=lambda f: f.__name__.strip("_"))
def test_a_pool_folder_others_could_write_is_refused_and_nothing_in_it_loads(pool, monkeypatch, change):
    # What another user would leave there: their library, with its own digest recorded.
    pool.folder.mkdir(parents=True, mode=0o700)
    plant(cpu_pool.library_path(), pool.planted)
    record(pool.folder, pool.planted)
    why = change(pool.folder)
    if change is _folder_another_users:
        monkeypatch.setattr(os, "geteuid", lambda uid=os.geteuid(): uid + 1)
    assert cpu_pool.library() is None and cpu_pool.unavailable() == why
    assert (pool.compiled, pool.lines("loaded"), pool.lines("planted")) == (0, 0, 0)
    assert cpu_pool.keep(0) is False and cpu_pool.counts()["hits"] == 0


def test_without_a_compiler_a_budgeted_run_unmaps_and_says_why(monkeypatch):
    monkeypatch.setattr(cpu_pool, "compile_to", REAL_COMPILE, raising=False)
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert cpu_pool.compile_to("pool.so") == "no C++ compiler (no-such-compiler) on the PATH"
    monkeypatch.setenv("CXX", "false")
    assert cpu_pool.compile_to("pool.so") == "false failed to build it: no message"


def test_a_failed_build_leaves_nothing_in_the_pools_folder(pool, monkeypatch):
    monkeypatch.setattr(cpu_pool, "compile_to", lambda output: "c++ failed to build it: no message")
    assert cpu_pool.library() is None and cpu_pool.unavailable() == "c++ failed to build it: no message"
    assert list(pool.folder.iterdir()) == []
