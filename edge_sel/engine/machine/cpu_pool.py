"""A pool of freed CPU pages, bounded by what is asked of it, in front of torch's CPU allocator
(cpu_pool.cpp).

Under a memory budget glibc's heap cannot keep what a step frees, so blocks of 64 KiB and more are
unmapped when freed (peak_memory.py) and every step faults its pages in afresh: Lite0 at 96 px, the
norms in micro-batches of one image, 1.07-1.37 s and 194,000-229,000 minor faults a step against 0.71-0.86
s with the heap kept, which measures over the budget. torch's CUDA caching allocator keeps freed blocks,
cutting a smaller block from a larger free one; torch's CPU allocator has no such cache that Python can
turn on, and is replaceable only from C++ (c10::SetCPUAllocator). So the pool is a small C++ library
built once per device with the C++ compiler (torch's headers and libc10), kept in the device cache, and
loaded with ctypes. It maps blocks of 64 KiB and more itself, in whole pages; a freed block's pages join
the free pages beside them, and a request is cut from the smallest free range that holds it. Free pages
are kept as long as the pool's pages reach no higher than the most asked of it at once plus a slack (a
share of a budgeted run's room beside its count and growth); past that, the ends of the largest free
ranges go back to the system. Where no compiler is found or the build fails, a budgeted run unmaps as
before, and its plan line says why."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from edge_sel.data.folder import cache_dir

SOURCE = Path(__file__).with_name("cpu_pool.cpp")
# "0" turns the pool off (a bench's row before it; a device whose compiler misbehaves).
VARIABLE = "EDGE_SEL_CPU_POOL"
_unavailable: list[str] = []


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def library_path() -> Path:
    """Where the built library is kept: one per source, torch build and C++ ABI."""
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    key = hashlib.sha256(SOURCE.read_bytes() + f"|{torch.__version__}|{abi}".encode()).hexdigest()[:16]
    return cache_dir() / f"cpu-pool-{key}.so"


def build(target: Path) -> str | None:
    """Compiles the pool into `target` (written whole, then renamed into place); None where it was
    built, else why not."""
    cxx = compiler()
    if cxx is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on the PATH"
    from torch.utils import cpp_extension
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    os.close(fd)
    command = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
               *(f"-I{p}" for p in cpp_extension.include_paths()), str(SOURCE),
               *(f"-L{p}" for p in cpp_extension.library_paths()), "-lc10",
               *(f"-Wl,-rpath,{p}" for p in cpp_extension.library_paths()), "-o", tmp]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return f"{Path(cxx).name} failed to build it: {last}"
        os.replace(tmp, target)
        for old in target.parent.glob("cpu-pool-*.so"):     # built from another source or torch
            if old != target:
                old.unlink(missing_ok=True)
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{Path(cxx).name} failed to build it: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library():
    """The pool's functions, built where this device has not built them yet, and installed in front of
    torch's CPU allocator (keeping nothing until a limit is set); None where it cannot be (why: in
    `unavailable()`)."""
    if os.environ.get(VARIABLE, "").strip() == "0":
        _unavailable.append(f"{VARIABLE}=0")
        return None
    if not sys.platform.startswith("linux"):
        _unavailable.append("built on Linux only")
        return None
    path = library_path()
    why = None if path.is_file() else build(path)
    if why is None:
        try:
            lib = ctypes.CDLL(str(path))
            lib.edge_sel_pool_keep.argtypes = [ctypes.c_int, ctypes.c_size_t]
            for name in ("kept", "peak", "high"):
                getattr(lib, f"edge_sel_pool_{name}").restype = ctypes.c_size_t
            lib.edge_sel_pool_hits.restype = lib.edge_sel_pool_misses.restype = ctypes.c_uint64
            if lib.edge_sel_pool_install():
                return lib
            why = "torch kept another CPU allocator"
        except (OSError, AttributeError) as e:
            why = f"{path}: {e}"
    _unavailable.append(why)
    return None


def unavailable() -> str | None:
    """Why the pool is not in use, where library() found it could not be."""
    return _unavailable[-1] if _unavailable else None


def keep(slack_bytes: int | None) -> bool:
    """The pool emptied; then, unless `slack_bytes` is None, freed blocks kept as long as the pool's
    blocks reach no higher than the most it handed out at once (counted from now) plus `slack_bytes`.
    Returns whether the pool keeps freed blocks."""
    lib = library()
    if lib is None:
        return False
    _slack[0] = None if slack_bytes is None else max(0, int(slack_bytes))
    lib.edge_sel_pool_keep(_slack[0] is not None, _slack[0] or 0)
    return _slack[0] is not None


@contextlib.contextmanager
def slack_while(slack: int):
    """Inside, the pool keeps freed blocks with `slack` bytes of slack (keep()); afterwards as it was,
    emptied, whatever ends the inside."""
    before = slack_bytes()
    keep(slack)
    try:
        yield
    finally:
        keep(before)


def loaded() -> bool:
    """Whether the pool is installed in this process (never builds or installs it)."""
    return library.cache_info().currsize > 0 and library() is not None


def empty() -> None:
    """Every kept block back to the system, the most handed out at once counted again from now (a
    phase's blocks are not another's); whether it keeps blocks, and its slack, stay."""
    if loaded():
        keep(_slack[0])


def slack_bytes() -> int | None:
    """The slack the pool keeps blocks under (None: it keeps none)."""
    return _slack[0] if loaded() else None


def counts() -> dict:
    """Bytes kept free now, the most handed out at once since last emptied, and requests served from
    the pool and not since the process started."""
    if not loaded():
        return {"kept": 0, "peak": 0, "high": 0, "hits": 0, "misses": 0}
    lib = library()
    return {"kept": lib.edge_sel_pool_kept(), "peak": lib.edge_sel_pool_peak(), "high": lib.edge_sel_pool_high(),
            "hits": lib.edge_sel_pool_hits(), "misses": lib.edge_sel_pool_misses()}


_slack: list[int | None] = [None]
