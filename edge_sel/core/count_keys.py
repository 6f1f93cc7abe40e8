"""What a counted step's bytes depend on, as a digest: a count read back from a device's cache
(engine/machine/count_store.py) must be the count the counter would make now.

A count is a function of the meta twin's structure (every module's type and name, every parameter's
and buffer's shape, dtype and strides: the layout), the code that runs it (the twin's module classes
outside torch, the counter and the step's own files), the input's shape, the optimizer's kind and
settings, the kernels' rule and its thread count, and torch's version. Anything not named here that
could change a count (a factory that is not a `functools.partial`, a step without a key) gives no
key: the count is made, not read; so is a count of a model whose classes' source cannot be read (a
class defined in `__main__` run from a string, or in a compiled module).
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from functools import lru_cache, partial

import torch
from torch import nn

from edge_sel.core.lean_saves import lean_key

# The counter's own code: a change to any of these changes every count.
COUNTER_MODULES = ("edge_sel.core.memory", "edge_sel.core.kernel_workspace", "edge_sel.core.meta_outputs",
                   "edge_sel.core.micro_batches", "edge_sel.core.recompute", "edge_sel.core.lean_saves",
                   "edge_sel.core.count_keys", "edge_sel.core.meta_twin")


def digest(*parts) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:24]


@lru_cache(maxsize=None)
def file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return None


def source_file(module: str) -> str | None:
    try:
        return inspect.getsourcefile(sys.modules[module])
    except (KeyError, TypeError, OSError):       # not imported, built in, or __main__ without a file
        return None


def source_digest(modules) -> str | None:
    """The source files of the named modules, as one digest; None where one cannot be read."""
    files = [source_file(m) for m in sorted(set(modules))]
    if any(f is None for f in files):
        return None
    digests = [file_digest(f) for f in files]
    return None if any(d is None for d in digests) else digest(*(f"{f}:{d}" for f, d in zip(files, digests)))


def settings(m: nn.Module) -> str:
    """What a module computes with beside its tensors: its `extra_repr` (a convolution's stride,
    padding, dilation and groups, a pooling's kernel, an activation's `inplace`) and its plain
    attributes (a block of the model's own classes that keeps its stride as a number). A model with
    stride 4 counted first lent its count to the same model with stride 1: 10.5 MiB read for 49.5."""
    plain = sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and k != "training"
                   and isinstance(v, (bool, int, float, str, tuple, type(None))))
    return f"{m.extra_repr()}|{plain}"


def structure_key(twin: nn.Module) -> str | None:
    """The twin's modules with their settings, parameters and buffers, and the files its module
    classes come from (None where a class's source cannot be read)."""
    parts = [f"{name}:{type(m).__module__}.{type(m).__qualname__}:{settings(m)}" for name, m in twin.named_modules()]
    # Strides too: a channels-last model's convolutions keep no blocked copies (core/kernel_workspace.py).
    parts += [f"p {n}:{tuple(p.shape)}:{p.dtype}:{p.stride()}" for n, p in twin.named_parameters()]
    parts += [f"b {n}:{tuple(b.shape)}:{b.dtype}:{b.stride()}" for n, b in twin.named_buffers()]
    own = {type(m).__module__ for m in twin.modules() if not type(m).__module__.startswith("torch")}
    code = source_digest(own)
    return None if code is None else digest(*parts, code)


def optimizer_key(factory) -> str | None:
    """A `functools.partial` of a named function with plain settings; None for anything else (a
    lambda's settings cannot be read)."""
    if not isinstance(factory, partial) or not hasattr(factory.func, "__qualname__"):
        return None
    return f"{factory.func.__module__}.{factory.func.__qualname__}{factory.args}{sorted(factory.keywords.items())}"


def count_key(structure: str, input_shape, optimizer: str, step: str, kernels: str, signature: tuple,
              shape) -> str | None:
    """The digest one count is kept under."""
    counter = source_digest(COUNTER_MODULES)
    if counter is None:
        return None
    trains = "".join("1" if t else "0" for t in signature)
    return digest(structure, tuple(input_shape), optimizer, step, kernels, torch.get_num_threads(), torch.__version__,
                  counter, trains, shape.batch_size, shape.chunk, shape.recompute,
                  shape.bn_statistics, *lean_key(shape.lean))
