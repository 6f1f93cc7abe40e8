"""How to build a model, written into every checkpoint card so later commands rebuild it alone.

A spec's `name` is one of
  - a registered name (`edgecnn`, `mobilenetv2`, ...: edge_sel.models.MODELS);
  - an importable factory `package.module:callable`;
  - a file `path/to/file.py:callable` (kept as an absolute path, with the file's SHA-256);
  - `torchvision:NAME` or `timm:NAME`, where those libraries import (never with hub weights).
A factory is called with `num_classes=`, `in_channels=` when its signature accepts it, and the
spec's keyword arguments (`--model-arg key=value`).

A checkpoint's card is data that may come from elsewhere: rebuilding its model never runs code the
user did not choose (`check_card_spec`). Registered names always build. A file factory builds when
the user named it on this machine: in this process (`--model`), or in a pretrain here that recorded
its path and SHA-256 (models.trusted_files); a card's own digest proves nothing, since whoever wrote
the card computed it. Only a function or class defined in that file, named plainly (no dotted
walk to what the file imports), is called. An import, torchvision or timm spec, and a file factory
from elsewhere, build only when the user trusts model code (`edge-sel --trust-model-code` or
EDGE_SEL_TRUST_MODEL_CODE=1, as `trust_remote_code` works in the Hugging Face libraries) or chose
that spec in this process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edge_sel.core.meta_twin import meta_twin
from edge_sel.errors import InputError, parse_json
from edge_sel.models.start_weights import fit_state, read_state_file
from edge_sel.models.trusted_files import is_trusted, remember, trust_file

HUB_PREFIXES = ("torchvision:", "timm:")
TRUST_ENV = "EDGE_SEL_TRUST_MODEL_CODE"
_CHOSEN: set[str] = set()       # specs this process's user gave (make_spec, spec_of_object)


def trusts_model_code() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def chosen_by_user(spec: "ModelSpec") -> "ModelSpec":
    _CHOSEN.add(spec.name)
    return spec


def file_digest(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def check_card_spec(spec: "ModelSpec", where) -> None:
    """Refuse, in one line, to rebuild a card's model by running code the user did not choose."""
    if spec.kind == "registry" or spec.name in _CHOSEN:
        return
    if spec.kind == "file":
        return _check_card_file(spec, where)
    if trusts_model_code():
        return
    raise InputError(f"{where}: the model is built by {spec.kind} code {spec.name!r}, which edge-sel runs only "
                     f"when you trust it: edge-sel --trust-model-code COMMAND, or {TRUST_ENV}=1 "
                     f"(docs/models.md, 'What a checkpoint can run')")


def _check_card_file(spec: "ModelSpec", where) -> None:
    """A card's file factory: an absolute path (edge-sel writes no other), and a file the user
    trusts, by this machine's list or by --trust-model-code. The content is compared with the
    card's digest when the file is read (_load_file), so what runs is what was trusted."""
    path, _, attr = spec.name.rpartition(":")
    if not Path(path).is_absolute():
        raise InputError(f"{where}: the model file {path!r} is not an absolute path; edge-sel follows no path "
                         f"a card gives relative to where a command runs")
    plain_name(attr, spec.name)
    if trusts_model_code():
        return
    if spec.file_sha256 and is_trusted(path, spec.file_sha256):
        return
    raise InputError(f"{where}: the model is the file factory {spec.name}, which was not named on this machine; "
                     f"edge-sel imports a model file only when you named it here (pretrain --model, recorded in "
                     f"{trust_file()}) or trust it: edge-sel --trust-model-code COMMAND "
                     f"(docs/models.md, 'What a checkpoint can run')")


def plain_name(attr: str, label: str) -> None:
    """A file factory's callable is named by one Python name: a dotted walk would reach whatever the
    file imports (`mine.py:torch.hub.load`)."""
    if not attr.isidentifier():
        raise InputError(f"--model {label}: {attr!r} is not a plain name; name a function or class defined "
                         f"in the file")


@dataclass
class ModelSpec:
    name: str
    kwargs: dict = field(default_factory=dict)
    file_sha256: str | None = None      # a file factory's content when the spec was written

    @property
    def kind(self) -> str:
        if self.name.startswith(HUB_PREFIXES):
            return self.name.split(":", 1)[0]
        if ":" not in self.name:
            return "registry"
        return "file" if self.name.partition(":")[0].endswith(".py") else "import"

    def to_json(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "kwargs": dict(self.kwargs)}
        if self.file_sha256:
            out["file_sha256"] = self.file_sha256
        return out

    @classmethod
    def from_json(cls, d) -> "ModelSpec":
        if isinstance(d, str):
            return cls(d)
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("kwargs", {}), dict):
            raise ValueError(f"not a model spec: {d!r}")
        return cls(d["name"], dict(d.get("kwargs", {})), d.get("file_sha256"))


def spec_of_object(model: nn.Module) -> ModelSpec:
    """The spec of a model handed over as an object: its class, by module and name. A class of a
    script is `__main__:Class`, which that script rebuilds and other processes cannot."""
    cls = type(model)
    if "<locals>" in cls.__qualname__:
        raise InputError(f"model: {cls.__qualname__} is defined inside a function, so it cannot be rebuilt "
                         f"from the checkpoint; define it at module level, or pass 'module:factory' or "
                         f"'path/file.py:factory'")
    return chosen_by_user(ModelSpec(f"{cls.__module__}:{cls.__qualname__}"))


def parse_model_args(pairs) -> dict:
    """`--model-arg key=value` pairs: values read as JSON where they parse (numbers, true/false,
    lists), else kept as strings."""
    out = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"--model-arg {pair!r}: expected KEY=VALUE with KEY a Python name")
        try:
            out[key.strip()] = parse_json(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def make_spec(name: str, kwargs: dict | None = None) -> ModelSpec:
    """A spec as given by the user: a file factory is pinned to its absolute path and content."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"--model: expected a model name or factory, got {name!r}")
    spec = ModelSpec(name.strip(), dict(kwargs or {}))
    if spec.kind == "file":
        path, _, attr = spec.name.rpartition(":")
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise InputError(f"--model {name}: no such file {file}")
        spec = ModelSpec(f"{file}:{attr}", spec.kwargs, file_digest(file))
    return chosen_by_user(spec)


def trust_named_file(spec: ModelSpec) -> None:
    """A pretrain's own file factory, recorded as trusted on this machine, so its checkpoints and
    their fine-tunes rebuild here without --trust-model-code."""
    if spec.kind == "file" and spec.file_sha256:
        remember(spec.name.rpartition(":")[0], spec.file_sha256)


def _load_file(spec: ModelSpec):
    path, _, attr = spec.name.rpartition(":")
    plain_name(attr, spec.name)
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--model {spec.name}: no such file {file}")
    source = file.read_bytes()         # read once: the bytes compared are the bytes run
    digest = hashlib.sha256(source).hexdigest()
    if spec.file_sha256 and digest != spec.file_sha256:
        raise InputError(f"--model {spec.name}: {file} has changed since the checkpoint was made (SHA-256 "
                         f"{digest}, recorded {spec.file_sha256}); refusing to import it: restore the file "
                         f"or pretrain again")
    module_name = f"edge_sel_user_model_{digest[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module      # classes defined there must pickle and deepcopy
        try:
            exec(compile(source, str(file), "exec", dont_inherit=True), module.__dict__)
        except Exception as e:
            del sys.modules[module_name]
            raise InputError(f"--model {spec.name}: {file.name} fails to import ({e.__class__.__name__}: {e})") from None
    target = _attribute(module, attr, spec.name, str(file))
    if not (inspect.isfunction(target) or inspect.isclass(target)) or target.__module__ != module_name:
        raise InputError(f"--model {spec.name}: {attr!r} is not a function or class defined in {file.name} "
                         f"(one it imports is not called)")
    return target


def _attribute(module, attr: str, label: str, where: str | None = None):
    """`where`: what the user calls the module (a file's path; an importable module's name). An
    importable module's attribute may be dotted (a class's static method)."""
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise InputError(f"--model {label}: {where or module.__name__} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"--model {label}: {attr!r} is not callable")
    return target


def _import_factory(spec: ModelSpec):
    module_name, _, attr = spec.name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:     # ImportError, or the module's own failure on import
        raise InputError(f"--model {spec.name}: cannot import {module_name} ({e.__class__.__name__}: {e})") from None
    return _attribute(module, attr, spec.name)


def _hub_factory(spec: ModelSpec):
    library, _, arch = spec.name.partition(":")
    try:
        lib = importlib.import_module(library if library == "timm" else "torchvision.models")
    except Exception as e:
        raise InputError(f"--model {spec.name}: {library} does not import here "
                         f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if library == "timm":
        def build(num_classes, in_channels=3, **kwargs):
            return lib.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
        return build

    def build(num_classes, **kwargs):
        return lib.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    return build


def _registered(spec: ModelSpec):
    from edge_sel.models.registry import MODELS
    if spec.name not in MODELS:
        raise InputError(f"--model: unknown model {spec.name!r}; choose one of {', '.join(MODELS)}, "
                         f"or give a factory as package.module:callable or path/to/file.py:callable")
    return MODELS[spec.name]


def factory(spec: ModelSpec):
    return {"registry": _registered, "import": _import_factory, "file": _load_file,
            "torchvision": _hub_factory, "timm": _hub_factory}[spec.kind](spec)


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def build_from_spec(spec: ModelSpec, num_classes: int, input_shape: list[int], check: bool = True) -> nn.Module:
    """The spec's model for `num_classes` outputs, checked on one meta-device input of `input_shape`
    (no compute): a factory that fails, returns something else than a module, or gives the wrong
    output shape is one line naming it."""
    make = factory(spec)
    kwargs = {"num_classes": num_classes, **spec.kwargs}
    if _accepts(make, "in_channels"):
        kwargs.setdefault("in_channels", input_shape[0])
    try:
        model = make(**kwargs)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"--model {spec.name}: building it with {kwargs} failed "
                         f"({e.__class__.__name__}: {e})") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--model {spec.name}: returned {type(model).__name__}, not a torch.nn.Module")
    if not any(True for _ in model.parameters()):
        raise InputError(f"--model {spec.name}: the model has no parameters to train")
    if check:
        check_output(model, spec.name, num_classes, input_shape)
    return model


def check_output(model: nn.Module, label: str, num_classes: int, input_shape: list[int]) -> None:
    """One forward pass of a meta-device copy on a batch of two: [2, num_classes] logits expected."""
    try:
        twin = meta_twin(model).eval()
        with torch.no_grad():
            out = twin(torch.zeros(2, *input_shape, device="meta"))
    except Exception as e:     # a model that cannot run on meta tensors is checked by its first step instead
        if "meta" in str(e).lower() or isinstance(e, NotImplementedError):
            return
        raise InputError(f"--model {label}: fails on inputs of shape {list(input_shape)} "
                         f"({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(out, torch.Tensor) or list(out.shape) != [2, num_classes]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"--model {label}: returns {shape} for 2 inputs of shape {list(input_shape)}; "
                         f"expected logits of shape [2, {num_classes}]")


def load_init_weights(model: nn.Module, path, label: str = "--init-weights") -> dict:
    """Starting weights from a local file (safetensors, or a torch state dict read with
    weights_only=True): every tensor must fit, except a classifier trained for other classes or
    missing, which is made anew (models.start_weights). Returns what was loaded, for the card."""
    path = Path(path)
    state = read_state_file(path, label)
    try:
        anew = fit_state(model, state, f"{label} {path}")
    except RuntimeError as e:       # a model's own load_state_dict refusing
        raise InputError(f"{label} {path}: does not fit the model ({str(e).splitlines()[0]})") from None
    return {"file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "tensors": len(state), **({"made_anew": anew} if anew else {})}
