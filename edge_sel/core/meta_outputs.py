"""The outputs of meta kernels, reused across a counter's steps (core/memory.py).

torch computes some ops' meta outputs in Python (BatchNorm forward and backward, hardtanh and its
in-place form: 4-5 ms a call on a loaded 2-core host, about two thirds of a mobilenetv2 step counted
on the meta device), and a plan counts the same ops on the same shapes dozens of times. A call of an
op on inputs of the same shapes, strides and dtypes, with the same other arguments, as a call before
gets new meta tensors of the shapes and strides that call returned, or its first input back where the
op is an in-place activation that returned it. Calls whose outputs view an input, share a storage or
carry anything but tensors and None are always run."""

from __future__ import annotations

import torch

# In-place ops whose meta kernel changes nothing but returns its first input.
IN_PLACE = {"hardtanh_", "relu_", "relu6_", "silu_", "hardswish_", "hardsigmoid_", "leaky_relu_", "elu_",
            "gelu_", "sigmoid_", "tanh_"}
_NOT_REUSABLE = object()


def _key(value):
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            raise TypeError
        return ("t", tuple(value.shape), value.stride(), value.dtype, value.storage_offset())
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, torch.memory_format,
                                           torch.layout)):
        return value
    raise TypeError


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _spec(out, args):
    """How to make `out` again from new inputs, or _NOT_REUSABLE."""
    single = isinstance(out, torch.Tensor)
    items = [out] if single else out
    if not isinstance(items, (tuple, list)):
        return _NOT_REUSABLE
    inputs = {_storage(a) for a in args if isinstance(a, torch.Tensor)}
    seen, spec = set(), []
    for item in items:
        if item is None:
            spec.append(None)
        elif not isinstance(item, torch.Tensor):
            return _NOT_REUSABLE
        elif args and item is args[0]:
            spec.append("first")
        else:
            storage = _storage(item)
            if storage in inputs or storage in seen or item.storage_offset() != 0:
                return _NOT_REUSABLE
            fresh = torch.empty_strided(item.shape, item.stride(), dtype=item.dtype, device="meta")
            if fresh.untyped_storage().nbytes() != item.untyped_storage().nbytes():
                return _NOT_REUSABLE
            seen.add(storage)
            spec.append((tuple(item.shape), item.stride(), item.dtype))
    return (single, type(out), spec)


def _make(spec, args):
    single, kind, items = spec
    made = [None if s is None else args[0] if s == "first" else
            torch.empty_strided(s[0], s[1], dtype=s[2], device="meta") for s in items]
    return made[0] if single else kind(made)


class MetaOutputs:
    """func(*args, **kwargs) on meta tensors, its outputs made again from the first call's shapes."""

    def __init__(self):
        self.specs: dict = {}
        self.reused = 0

    def __call__(self, func, args, kwargs):
        schema = func._schema
        if schema.is_mutable and func.overloadpacket.__name__ not in IN_PLACE:
            return func(*args, **kwargs)
        try:
            key = (func, _key(args), _key(tuple(sorted(kwargs.items()))))
        except TypeError:
            return func(*args, **kwargs)
        spec = self.specs.get(key)
        if spec is None:
            out = func(*args, **kwargs)
            self.specs[key] = _spec(out, args)
            return out
        if spec is _NOT_REUSABLE:
            return func(*args, **kwargs)
        self.reused += 1
        return _make(spec, args)
