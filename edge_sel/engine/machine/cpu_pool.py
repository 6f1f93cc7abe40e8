"""A pool of freed CPU pages, bounded by what is asked of it, in front of torch's CPU allocator
(cpu_pool.cpp).

Under a memory budget glibc's heap cannot keep what a step frees, so blocks of 64 KiB and more are
unmapped when freed (peak_memory.py) and every step faults its pages in afresh: Lite0 at 96 px, the
norms in micro-batches of one image, 1.07-1.37 s and 194,000-229,000 minor faults a step against 0.71-0.86
s with the heap kept, which measures over the budget. torch's CUDA caching allocator keeps freed blocks,
cutting a smaller block from a larger free one; torch's CPU allocator has no such cache that Python can
turn on, and is replaceable only from C++ (c10::SetCPUAllocator). So the pool is a small C++ library
built once per device with the C++ compiler (torch's headers and libc10) and loaded with ctypes. The
cache is data: the library is kept in a folder of it that only this user can write, and loaded from the
very descriptor whose SHA-256 was checked against the one recorded when it was built (private_dir.py),
so one planted there is built over, never loaded. It maps blocks of 64 KiB and more itself, in whole
pages; a freed block's pages join the free pages beside them, and a request is cut from the smallest
free range that holds it. Free pages are kept as long as the pool's pages reach no higher than the most
asked of it at once plus a slack (a share of a budgeted run's room beside its count and growth); past
that, the ends of the largest free ranges go back to the system. Where no compiler is found, the build
fails or the folder is not this user's alone, a budgeted run unmaps as before, and its plan line says why."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from edge_sel.data.folder import cache_dir
from edge_sel.engine.machine import private_dir
from edge_sel.engine.machine.private_dir import Untrusted

SOURCE = Path(__file__).with_name("cpu_pool.cpp")
# "0" turns the pool off (a bench's row before it; a device whose compiler misbehaves).
VARIABLE = "EDGE_SEL_CPU_POOL"
OLD_BUILD = re.compile(r"cpu-pool-[0-9a-f]{16}\.(so|json)")
_unavailable: list[str] = []


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def library_folder() -> Path:
    """Where the built library is kept: a folder of the device cache that only this user can write
    (private_dir.py), never the cache itself, which others may write."""
    return cache_dir() / "lib"


def library_name() -> str:
    """The built library's name, without suffix: one per source, torch build and C++ ABI."""
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    key = hashlib.sha256(SOURCE.read_bytes() + f"|{torch.__version__}|{abi}".encode()).hexdigest()[:16]
    return f"cpu-pool-{key}"


def library_path() -> Path:
    """The built library's file (for messages: it is opened through its folder's descriptor)."""
    return library_folder() / f"{library_name()}.so"


def compile_to(output: str) -> str | None:
    """Compiles the pool into the file `output`; None where it was built, else why not."""
    cxx = compiler()
    if cxx is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on the PATH"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # torch's headers and libraries where torch.utils.cpp_extension finds them; importing that module
    # grew a budgeted run by 4.1 MiB on a new device, beside its steps.
    root = Path(torch.__file__).parent
    includes, lib = [root / "include", root / "include" / "torch" / "csrc" / "api" / "include"], root / "lib"
    command = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
               *(f"-I{p}" for p in includes), str(SOURCE), f"-L{lib}", "-lc10", f"-Wl,-rpath,{lib}", "-o", output]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{Path(cxx).name} failed to build it: {e}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{Path(cxx).name} failed to build it: {last}"
    return None


def build(folder: int, name: str) -> int:
    """Compiles the pool into a file of its own in the private folder open as `folder`, records its
    SHA-256 in `name`.json, then renames it into place as `name`.so; returns a read-only descriptor
    of what was built (the digest read from it: load this, not the path). Raises Untrusted (why)
    where it cannot."""
    shown, tmp = library_folder() / f"{name}.so", None
    try:
        tmp = private_dir.new_file(folder, f"{name}.so.")
        why = compile_to(private_dir.path_through(folder, tmp))
        if why is not None:
            raise Untrusted(why)
        fd = private_dir.open_own_file(folder, tmp, shown)
        try:
            os.fchmod(fd, 0o500)            # the compiler's mode follows the umask; no one writes it again
            digest = private_dir.sha256_of(fd)
            private_dir.write_atomically(folder, f"{name}.json", json.dumps({"sha256": digest}).encode())
            os.replace(tmp, f"{name}.so", src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            os.close(fd)
            raise
    except OSError as e:
        raise Untrusted(f"{shown}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            private_dir.remove(folder, tmp)
    for old in os.listdir(folder):       # built from another source or torch
        if OLD_BUILD.fullmatch(old) and old not in (f"{name}.so", f"{name}.json"):
            private_dir.remove(folder, old)
    return fd


def verified(folder: int, name: str) -> int:
    """A read-only descriptor of `name`.so in the private folder open as `folder`, whose SHA-256 (read
    from the descriptor) is the one recorded when it was built; raises Untrusted (why) where it is
    a link, another user's, writable by others or not what was built, FileNotFoundError where it or
    its record is missing."""
    shown, record = library_folder() / f"{name}.so", library_folder() / f"{name}.json"
    try:
        try:
            fd = private_dir.open_own_file(folder, f"{name}.json", record)
        except FileNotFoundError:
            if os.path.lexists(shown):          # the library without the digest it was built with
                raise Untrusted(f"{record}: missing, so {shown.name} is not known to be what was built") from None
            raise
        try:
            recorded = json.loads(private_dir.read_small(fd, 4096, record))["sha256"]
        finally:
            os.close(fd)
        fd = private_dir.open_own_file(folder, f"{name}.so", shown)
    except (ValueError, TypeError, KeyError):
        raise Untrusted(f"{record}: no SHA-256 recorded") from None
    try:
        digest = private_dir.sha256_of(fd)
        if digest != recorded:
            raise Untrusted(f"{shown}: SHA-256 {digest[:12]}... is not the {str(recorded)[:12]}... recorded when built")
    except BaseException:
        os.close(fd)
        raise
    return fd


def opened() -> int:
    """A read-only descriptor of the pool's library as built here: the one kept where it is what was
    built, else built afresh; raises Untrusted (why) where the folder is not only this user's or the
    build fails."""
    folder = private_dir.open_private(library_folder())
    try:
        try:
            return verified(folder, library_name())
        except FileNotFoundError:
            return build(folder, library_name())
        except Untrusted as kept:           # damaged or planted: built again, never loaded
            try:
                return build(folder, library_name())
            except Untrusted as e:
                raise Untrusted(f"{e} (the one kept was refused: {kept})") from None
    finally:
        os.close(folder)


@functools.cache
def library():
    """The pool's functions, built where this device has not built them yet, and installed in front of
    torch's CPU allocator (keeping nothing until a limit is set); None where it cannot be (why: in
    `unavailable()`). Loaded from the descriptor whose digest was checked, so nothing can be swapped in
    between."""
    if os.environ.get(VARIABLE, "").strip() == "0":
        _unavailable.append(f"{VARIABLE}=0")
        return None
    if not sys.platform.startswith("linux"):
        _unavailable.append("built on Linux only")
        return None
    try:
        fd = opened()
    except (Untrusted, OSError) as e:
        _unavailable.append(str(e) if isinstance(e, Untrusted) else f"{library_folder()}: {e.strerror or e}")
        return None
    try:
        lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
        lib.edge_sel_pool_keep.argtypes = [ctypes.c_int, ctypes.c_size_t]
        for name in ("kept", "peak", "high"):
            getattr(lib, f"edge_sel_pool_{name}").restype = ctypes.c_size_t
        lib.edge_sel_pool_hits.restype = lib.edge_sel_pool_misses.restype = ctypes.c_uint64
        if lib.edge_sel_pool_install():
            return lib
        why = "torch kept another CPU allocator"
    except (OSError, AttributeError) as e:
        why = f"{library_path()}: {e}"
    finally:
        os.close(fd)                 # a loaded library stays mapped
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
