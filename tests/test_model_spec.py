"""Model specs (edge_sel/models/spec.py) function by function: what kind a name is, what a card
stores and reads back, when a card's model may be rebuilt, how a file, import or hub factory is
found and called, the checks on what it builds, and starting weights from a file. Tiny modules
and no training, so these run in well under a second."""

import hashlib
import json
import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from edge_sel.errors import InputError
from edge_sel.models import spec as spec_mod
from edge_sel.models import trusted_files
from edge_sel.models.registry import MODELS
from edge_sel.models.spec import (TRUST_ENV, ModelSpec, build_from_spec, check_card_spec, check_output, factory,
                                  file_digest, load_init_weights, make_spec, parse_model_args, spec_of_object,
                                  trusts_model_code)

pytestmark = pytest.mark.usefixtures("one_thread")
FACTORY_FILE = """
import functools

import torch
from torch import nn
from torch.hub import load as hub_load

def make(num_classes, in_channels=1, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, num_classes))

def make_plain(num_classes):
    return nn.Linear(4, num_classes)

class Outer:
    @staticmethod
    def make(num_classes, **kwargs):
        return nn.Linear(4, num_classes)

VALUE = 3
partial_make = functools.partial(make, width=2)
"""


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """No trust, no spec chosen in this process and an empty list of trusted files, whatever ran before."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setattr(spec_mod, "_CHOSEN", set())
    monkeypatch.setenv(trusted_files.TRUST_FILE_ENV, str(tmp_path / "trust" / "files.json"))


def factory_file(tmp_path, text=FACTORY_FILE, name="m.py"):
    file = tmp_path / name
    file.write_text(text)
    return file


def message(excinfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize("value, trusted", [(None, False), ("", False), ("1", True), ("true", True),
                                            (" TRUE ", True), ("Yes", True), ("0", False), ("no", False),
                                            ("trusted", False)])
def test_trust_comes_from_the_environment_in_three_spellings(monkeypatch, value, trusted):
    """Mutants: the default "" (None: AttributeError when unset), strip or lower dropped, a spelling
    changed or dropped from the accepted three."""
    if value is not None:
        monkeypatch.setenv(TRUST_ENV, value)
    assert trusts_model_code() is trusted


@pytest.mark.parametrize("name, kind", [("edgecnn", "registry"), ("torchvision:resnet18", "torchvision"),
                                        ("timm:a:b", "timm"), ("pkg.mod:make", "import"),
                                        ("/x/m.py:make", "file"), ("m.py:make.py", "file"),
                                        ("a:b.py:c", "import"), ("m.pyc:make", "import")])
def test_the_kind_of_a_name(name, kind):
    """Mutants: split(":", 1) as rsplit (timm:a:b would be "timm:a"), partition as rpartition
    (a:b.py:c would be a file), the ".py" suffix or the registry test changed."""
    assert ModelSpec(name).kind == kind


def test_a_spec_as_the_card_stores_it_and_reads_it_back():
    """Mutants: a key renamed or dropped, the kwargs not copied, file_sha256 always or never written,
    from_json's defaults (kwargs {}, sha None) changed."""
    spec = ModelSpec("pkg.mod:make", {"width": 8})
    out = spec.to_json()
    assert out == {"name": "pkg.mod:make", "kind": "import", "kwargs": {"width": 8}}
    out["kwargs"]["width"] = 1
    assert spec.kwargs == {"width": 8}
    pinned = ModelSpec("/x/m.py:make", {}, "ab" * 32)
    assert pinned.to_json() == {"name": "/x/m.py:make", "kind": "file", "kwargs": {}, "file_sha256": "ab" * 32}
    assert ModelSpec.from_json(pinned.to_json()) == pinned
    assert ModelSpec.from_json({"name": "edgecnn"}) == ModelSpec("edgecnn", {}, None)
    assert ModelSpec.from_json("edgecnn") == ModelSpec("edgecnn")
    d = {"name": "edgecnn", "kwargs": {"a": 1}}
    read = ModelSpec.from_json(d)
    d["kwargs"]["a"] = 2
    assert read.kwargs == {"a": 1} and read.file_sha256 is None
    assert ModelSpec("x").kwargs == {} and ModelSpec("x").file_sha256 is None


@pytest.mark.parametrize("bad", [5, None, [], {}, {"name": 3}, {"name": "x", "kwargs": [1]}, {"kwargs": {}}])
def test_what_is_not_a_spec_is_refused_naming_it(bad):
    with pytest.raises(ValueError) as e:
        ModelSpec.from_json(bad)
    assert message(e) == f"not a model spec: {bad!r}"


def test_a_registered_name_always_rebuilds():
    check_card_spec(ModelSpec("edgecnn"), "card")


def test_code_the_user_did_not_choose_is_refused_in_one_line_unless_trusted(monkeypatch):
    """Mutants: the registry, chosen or trust shortcut changed (and/or swapped, != as ==), the
    message's wording, kind or name."""
    for name in ("pkg.mod:make", "torchvision:resnet18", "timm:vit"):
        spec = ModelSpec(name)
        with pytest.raises(InputError) as e:
            check_card_spec(spec, "run/model.json")
        assert message(e) == (f"run/model.json: the model is built by {spec.kind} code {name!r}, which edge-sel "
                              f"runs only when you trust it: edge-sel --trust-model-code COMMAND, or "
                              f"EDGE_SEL_TRUST_MODEL_CODE=1 (docs/models.md, 'What a checkpoint can run')")
    spec_mod.chosen_by_user(ModelSpec("pkg.mod:make"))
    check_card_spec(ModelSpec("pkg.mod:make"), "card")
    with pytest.raises(InputError):
        check_card_spec(ModelSpec("pkg.mod:other"), "card")
    monkeypatch.setenv(TRUST_ENV, "1")
    check_card_spec(ModelSpec("pkg.mod:other"), "card")
    check_card_spec(ModelSpec("torchvision:resnet18"), "card")


def refusal_of(name: str, where: str = "ckpt/model.json") -> str:
    return (f"{where}: the model is the file factory {name}, which was not named on this machine; edge-sel imports "
            f"a model file only when you named it here (pretrain --model, recorded in {trusted_files.trust_file()}) "
            f"or trust it: edge-sel --trust-model-code COMMAND (docs/models.md, 'What a checkpoint can run')")


def test_a_card_file_factory_builds_only_when_this_machine_trusts_it_never_by_its_own_digest(tmp_path, monkeypatch):
    """Before: a card's file factory was imported whenever the file matched the card's own digest,
    which whoever wrote the card computed. Mutants: the allow-list test, its path or digest, the
    trust shortcut, the digest required, the message."""
    file = factory_file(tmp_path)
    digest = file_digest(file)
    spec = ModelSpec(f"{file}:make", {}, digest)
    for unpinned_or_pinned in (ModelSpec(f"{file}:make"), spec):
        with pytest.raises(InputError) as e:
            check_card_spec(unpinned_or_pinned, "ckpt/model.json")
        assert message(e) == refusal_of(f"{file}:make")
    trusted_files.remember(str(file), "cd" * 32)          # another content of the same path
    trusted_files.remember(str(tmp_path / "other.py"), digest)     # the same content elsewhere
    with pytest.raises(InputError):
        check_card_spec(spec, "card")
    trusted_files.remember(str(file), digest)
    check_card_spec(spec, "card")
    with pytest.raises(InputError):             # the list holds a digest: a card without one is not it
        check_card_spec(ModelSpec(f"{file}:make"), "card")
    monkeypatch.setenv(TRUST_ENV, "yes")
    check_card_spec(ModelSpec(f"{file}:make"), "card")
    check_card_spec(ModelSpec("/elsewhere/m.py:make", {}, "ef" * 32), "card")


@pytest.mark.parametrize("trusted", [False, True])
def test_a_card_file_factory_by_a_relative_path_or_a_dotted_name_is_refused_even_when_trusted(
        tmp_path, monkeypatch, trusted):
    """A relative path would be found from wherever the command runs; a dotted name walks to what
    the file imports (`mine.py:torch.hub.load`)."""
    if trusted:
        monkeypatch.setenv(TRUST_ENV, "1")
    with pytest.raises(InputError) as e:
        check_card_spec(ModelSpec("helper.py:make", {}, "ab" * 32), "ckpt/model.json")
    assert message(e) == ("ckpt/model.json: the model file 'helper.py' is not an absolute path; edge-sel follows "
                          "no path a card gives relative to where a command runs")
    with pytest.raises(InputError, match="not an absolute path"):
        check_card_spec(ModelSpec("../ckpt/helper.py:make"), "c")
    file = factory_file(tmp_path)
    trusted_files.remember(str(file), file_digest(file))
    for attr in ("torch.hub.load", "Outer.make", "", "1x"):
        with pytest.raises(InputError) as e:
            check_card_spec(ModelSpec(f"{file}:{attr}", {}, file_digest(file)), "c")
        assert message(e) == (f"--model {file}:{attr}: {attr!r} is not a plain name; name a function or class "
                              f"defined in the file")


def test_a_pretrains_file_factory_is_recorded_with_its_digest_and_nothing_else_is(tmp_path):
    file = factory_file(tmp_path)
    spec_mod.trust_named_file(make_spec(f"{file}:make"))
    spec_mod.trust_named_file(make_spec("edgecnn"))
    spec_mod.trust_named_file(ModelSpec(f"{file}:make"))       # no digest: nothing to trust
    spec_mod.trust_named_file(make_spec(f"{file}:make_plain"))  # the same file again: one entry
    assert trusted_files.trusted_entries() == [{"path": str(file), "sha256": file_digest(file)}]
    assert trusted_files.is_trusted(str(file), file_digest(file))


def test_chosen_by_user_marks_the_spec_and_returns_it():
    spec = ModelSpec("pkg.mod:make")
    assert spec_mod.chosen_by_user(spec) is spec
    assert spec_mod._CHOSEN == {"pkg.mod:make"}


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    file = factory_file(tmp_path, "abc")
    assert file_digest(file) == hashlib.sha256(b"abc").hexdigest()


class TopLevel(nn.Module):
    pass


def test_a_model_object_is_its_class_by_module_and_name_and_counts_as_chosen():
    spec = spec_of_object(nn.Linear(2, 2))
    assert spec == ModelSpec("torch.nn.modules.linear:Linear")
    assert spec_mod._CHOSEN == {"torch.nn.modules.linear:Linear"}
    assert spec_of_object(TopLevel()).name == f"{__name__}:TopLevel"


def test_a_class_defined_in_a_function_is_refused_naming_it():
    class Local(nn.Module):
        pass
    with pytest.raises(InputError) as e:
        spec_of_object(Local())
    qual = Local.__qualname__
    assert message(e) == (f"model: {qual} is defined inside a function, so it cannot be rebuilt from the "
                          f"checkpoint; define it at module level, or pass 'module:factory' or 'path/file.py:factory'")
    assert spec_mod._CHOSEN == set()


def test_model_args_are_json_where_they_parse_and_strings_elsewhere():
    """Mutants: partition as rpartition (a=b=c), the key not stripped, JSON not tried, None pairs."""
    assert parse_model_args(None) == {}
    assert parse_model_args([]) == {}
    assert parse_model_args(["width=8", " act =relu", "sizes=[1, 2]", "on=true", "x=1.5", "expr=a=b", "empty="]) == {
        "width": 8, "act": "relu", "sizes": [1, 2], "on": True, "x": 1.5, "expr": "a=b", "empty": ""}


@pytest.mark.parametrize("pair", ["width", "=3", "1x=3", "a b=1", " =1"])
def test_a_model_arg_that_is_not_key_equals_value_is_one_line(pair):
    with pytest.raises(InputError) as e:
        parse_model_args(["ok=1", pair])
    assert message(e) == f"--model-arg {pair!r}: expected KEY=VALUE with KEY a Python name"


@pytest.mark.parametrize("name", [5, None, "", "   "])
def test_make_spec_refuses_a_name_that_is_not_one(name):
    with pytest.raises(InputError) as e:
        make_spec(name)
    assert message(e) == f"--model: expected a model name or factory, got {name!r}"


def test_make_spec_keeps_a_name_and_a_copy_of_its_arguments():
    args = {"width": 4}
    spec = make_spec(" edgecnn ", args)
    args["width"] = 5
    assert spec == ModelSpec("edgecnn", {"width": 4}, None)
    assert spec_mod._CHOSEN == {"edgecnn"}
    assert make_spec("pkg.mod:make") == ModelSpec("pkg.mod:make", {}, None)


def test_make_spec_pins_a_file_factory_to_its_absolute_path_and_content(tmp_path, monkeypatch):
    """Mutants: rpartition as partition (the last colon ends the path), expanduser or resolve
    dropped, the digest not recorded, the pinned spec not marked chosen."""
    folder = tmp_path / "sub"
    folder.mkdir()
    file = factory_file(folder)
    monkeypatch.chdir(tmp_path)
    spec = make_spec("sub/../sub/m.py:make", {"width": 2})
    assert spec == ModelSpec(f"{file}:make", {"width": 2}, file_digest(file))
    assert spec_mod._CHOSEN == {f"{file}:make"}
    monkeypatch.setenv("HOME", str(folder))
    assert make_spec("~/m.py:make").name == f"{file}:make"
    with pytest.raises(InputError) as e:
        make_spec("gone.py:make")
    assert message(e) == f"--model gone.py:make: no such file {tmp_path / 'gone.py'}"
    with pytest.raises(InputError) as e:
        make_spec("sub/m.py:make:x")
    assert message(e) == f"--model sub/m.py:make:x: no such file {folder / 'm.py:make'}"


def test_a_file_factory_is_imported_once_under_a_name_from_its_digest(tmp_path):
    """Mutants: the module name, the sys.modules cache (a second import makes other functions)."""
    file = factory_file(tmp_path)
    spec = make_spec(f"{file}:make")
    digest = file_digest(file)
    make = factory(spec)
    try:
        module = sys.modules[f"edge_sel_user_model_{digest[:16]}"]
        assert make is module.make and factory(spec) is make
        assert module.__file__ == str(file)
        assert factory(make_spec(f"{file}:Outer")) is module.Outer
    finally:
        sys.modules.pop(f"edge_sel_user_model_{digest[:16]}", None)


def test_a_file_factory_that_changed_or_is_gone_or_fails_is_one_line(tmp_path):
    file = factory_file(tmp_path)
    spec = make_spec(f"{file}:make")
    recorded = spec.file_sha256
    file.write_text(FACTORY_FILE + "\n# edited\n")
    with pytest.raises(InputError) as e:
        factory(spec)
    assert message(e) == (f"--model {file}:make: {file} has changed since the checkpoint was made (SHA-256 "
                          f"{file_digest(file)}, recorded {recorded}); refusing to import it: restore the file "
                          f"or pretrain again")
    unpinned = ModelSpec(spec.name)         # no digest recorded (a trusted card): any content imports
    try:
        assert callable(factory(unpinned))
    finally:
        sys.modules.pop(f"edge_sel_user_model_{file_digest(file)[:16]}", None)
    file.unlink()
    with pytest.raises(InputError) as e:
        factory(spec)
    assert message(e) == f"--model {file}:make: no such file {file}"
    broken = factory_file(tmp_path, "x = 1\ny = 1 / 0\n", "broken.py")
    with pytest.raises(InputError) as e:
        factory(make_spec(f"{broken}:make"))
    assert message(e) == f"--model {broken}:make: broken.py fails to import (ZeroDivisionError: division by zero)"
    assert e.value.__cause__ is None
    assert f"edge_sel_user_model_{file_digest(broken)[:16]}" not in sys.modules


def test_an_attribute_missing_or_not_callable_is_named(tmp_path):
    file = factory_file(tmp_path)
    digest = file_digest(file)
    try:
        for attr, text in [("nope", f"{file} has no attribute 'nope'"),
                           ("Outer.make", "'Outer.make' is not a plain name; name a function or class defined "
                                          "in the file"),
                           ("VALUE", "'VALUE' is not callable"),
                           ("hub_load", "'hub_load' is not a function or class defined in m.py (one it imports "
                                        "is not called)"),
                           ("partial_make", "'partial_make' is not a function or class defined in m.py (one it "
                                            "imports is not called)")]:
            with pytest.raises(InputError) as e:
                factory(make_spec(f"{file}:{attr}"))
            assert message(e) == f"--model {file}:{attr}: {text}"
        with pytest.raises(InputError) as e:        # a card's spec: the path ends at the last colon
            factory(ModelSpec(f"{file}:make:x", {}, digest))
        assert message(e) == f"--model {file}:make:x: no such file {file}:make"
        with pytest.raises(InputError) as e:
            factory(ModelSpec("json:nope"))
        assert message(e) == "--model json:nope: json has no attribute 'nope'"
        with pytest.raises(InputError) as e:        # the module ends at the first colon
            factory(ModelSpec("json:loads:x"))
        assert message(e) == "--model json:loads:x: json has no attribute 'loads:x'"
    finally:
        sys.modules.pop(f"edge_sel_user_model_{digest[:16]}", None)


def test_an_import_factory_is_the_module_attribute_or_one_line():
    import json
    import os.path
    assert factory(ModelSpec("json:loads")) is json.loads
    assert factory(ModelSpec("os.path:join")) is os.path.join
    with pytest.raises(InputError) as e:
        factory(ModelSpec("no_such_pkg_xyz.models:make"))
    assert message(e) == ("--model no_such_pkg_xyz.models:make: cannot import no_such_pkg_xyz.models "
                          "(ModuleNotFoundError: No module named 'no_such_pkg_xyz')")


def test_a_registered_name_is_the_registry_entry_or_one_line_listing_them():
    assert factory(ModelSpec("edgecnn")) is MODELS["edgecnn"]
    with pytest.raises(InputError) as e:
        factory(ModelSpec("nonet"))
    assert message(e) == (f"--model: unknown model 'nonet'; choose one of {', '.join(MODELS)}, or give a factory "
                          f"as package.module:callable or path/to/file.py:callable")


def test_hub_factories_build_without_weights_with_the_class_count(monkeypatch):
    """Mutants: the library chosen (timm vs torchvision.models), pretrained/weights, num_classes,
    in_chans, the default of three channels, the architecture name."""
    calls = []
    timm = types.ModuleType("timm")
    timm.create_model = lambda *a, **k: calls.append(("timm", a, k)) or "t"
    tv = types.ModuleType("torchvision.models")
    tv.get_model = lambda *a, **k: calls.append(("tv", a, k)) or "v"
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv)
    assert factory(ModelSpec("timm:vit_tiny"))(num_classes=5, in_channels=1, drop_rate=0.1) == "t"
    assert factory(ModelSpec("timm:vit_tiny"))(num_classes=4) == "t"
    assert factory(ModelSpec("torchvision:resnet18"))(num_classes=7, zero_init_residual=True) == "v"
    assert factory(ModelSpec("timm:hf:vit"))(num_classes=2) == "t"       # the library ends at the first colon
    assert calls[-1] == ("timm", ("hf:vit",), {"pretrained": False, "num_classes": 2, "in_chans": 3})
    assert calls[:3] == [("timm", ("vit_tiny",), {"pretrained": False, "num_classes": 5, "in_chans": 1, "drop_rate": 0.1}),
                     ("timm", ("vit_tiny",), {"pretrained": False, "num_classes": 4, "in_chans": 3}),
                     ("tv", ("resnet18",), {"weights": None, "num_classes": 7, "zero_init_residual": True})]


def test_a_hub_library_that_does_not_import_is_one_line(monkeypatch):
    """Mutants: the message, its first line only, the empty message case."""
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(InputError) as e:
        factory(ModelSpec("timm:vit"))
    assert message(e) == "--model timm:vit: timm does not import here (ModuleNotFoundError: import of timm halted; None in sys.modules)"
    real = importlib.import_module

    def failing(text):
        def import_module(name, *a):
            if name.startswith(("timm", "torchvision")):
                raise RuntimeError(text)
            return real(name, *a)
        return import_module
    monkeypatch.setattr(importlib, "import_module", failing("first line\nsecond line"))
    with pytest.raises(InputError) as e:
        factory(ModelSpec("torchvision:resnet18"))
    assert message(e) == "--model torchvision:resnet18: torchvision does not import here (RuntimeError: first line)"
    monkeypatch.setattr(importlib, "import_module", failing(""))
    with pytest.raises(InputError) as e:
        factory(ModelSpec("torchvision:resnet18"))
    assert message(e) == "--model torchvision:resnet18: torchvision does not import here (RuntimeError: )"


class Net(nn.Module):
    def __init__(self, num_classes, out=None):
        super().__init__()
        self.fc = nn.Linear(4, num_classes)
        self.out = out

    def forward(self, x):
        y = self.fc(x.flatten(1)[:, :4])
        return self.out(y) if self.out else y


def test_the_factory_gets_the_class_count_the_channels_when_it_takes_them_and_the_spec_arguments(monkeypatch):
    """Mutants: num_classes, in_channels from input_shape[0] (or [1]), setdefault as a plain
    assignment (the spec's in_channels wins), _accepts for a named or **kwargs parameter."""
    seen = []

    def with_channels(num_classes, in_channels, width=1):
        seen.append(("c", num_classes, in_channels, width))
        return Net(num_classes)

    def with_kwargs(num_classes, **kwargs):
        seen.append(("k", num_classes, kwargs))
        return Net(num_classes)

    def plain(num_classes):
        seen.append(("p", num_classes))
        return Net(num_classes)
    makers = {"a:with_channels": with_channels, "a:with_kwargs": with_kwargs, "a:plain": plain}
    monkeypatch.setattr(spec_mod, "factory", lambda spec: makers[spec.name])
    build_from_spec(ModelSpec("a:with_channels", {"width": 2}), 3, [2, 1, 2])
    build_from_spec(ModelSpec("a:with_channels", {"in_channels": 5}), 3, [2, 1, 2])
    build_from_spec(ModelSpec("a:with_kwargs"), 4, [1, 2, 2])
    build_from_spec(ModelSpec("a:plain"), 2, [3, 2, 2])
    assert seen == [("c", 3, 2, 2), ("c", 3, 5, 1), ("k", 4, {"in_channels": 1}), ("p", 2)]


def test_accepts_is_false_for_a_callable_without_a_signature():
    assert spec_mod._accepts(max, "in_channels") is False
    assert spec_mod._accepts(lambda num_classes, in_channels: 0, "in_channels") is True
    assert spec_mod._accepts(lambda num_classes, **kw: 0, "in_channels") is True
    assert spec_mod._accepts(lambda num_classes, *a: 0, "in_channels") is False
    assert spec_mod._accepts(lambda num_classes, channels=1: 0, "in_channels") is False


def test_what_the_factory_builds_is_checked_in_one_line(monkeypatch):
    def boom(num_classes, width):
        raise TypeError("bad width")

    def refuses(num_classes):
        raise InputError("the factory's own words")
    makers = {"a:boom": boom, "a:refuses": refuses, "a:int": lambda num_classes: 7,
              "a:empty": lambda num_classes: nn.ReLU(), "a:wide": lambda num_classes: Net(num_classes + 1),
              "a:ok": lambda num_classes: Net(num_classes)}
    monkeypatch.setattr(spec_mod, "factory", lambda spec: makers[spec.name])
    cases = [("a:boom", "--model a:boom: building it with {'num_classes': 3, 'width': 2} failed (TypeError: bad width)"),
             ("a:refuses", "the factory's own words"),
             ("a:int", "--model a:int: returned int, not a torch.nn.Module"),
             ("a:empty", "--model a:empty: the model has no parameters to train"),
             ("a:wide", "--model a:wide: returns [2, 4] for 2 inputs of shape [1, 2, 2]; expected logits of shape [2, 3]")]
    for name, text in cases:
        with pytest.raises(InputError) as e:
            build_from_spec(ModelSpec(name, {"width": 2} if name == "a:boom" else {}), 3, [1, 2, 2])
        assert message(e) == text, name
    assert isinstance(build_from_spec(ModelSpec("a:wide"), 3, [1, 2, 2], check=False), Net)
    model = build_from_spec(ModelSpec("a:ok"), 3, [1, 2, 2])
    assert isinstance(model, Net) and model.fc.weight.device.type == "cpu" and model.training


class TrainOnly(nn.Module):
    """Right logits only in eval mode, where the check runs it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(x.flatten(1)[:, :4])
        return y if not self.training else y[:1]


class Fails(nn.Module):
    def __init__(self, error):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.error = error

    def forward(self, x):
        raise self.error


def test_check_output_runs_a_meta_copy_in_eval_mode_on_two_inputs():
    model = TrainOnly()
    check_output(model, "m", 3, [1, 2, 2])
    assert model.training and model.fc.weight.device.type == "cpu"
    with pytest.raises(InputError) as e:
        check_output(Net(3, out=lambda y: (y, y)), "m", 3, [4])
    assert message(e) == "--model m: returns tuple for 2 inputs of shape [4]; expected logits of shape [2, 3]"
    with pytest.raises(InputError) as e:
        check_output(Net(3, out=lambda y: y[:1]), "m", 3, [4])
    assert message(e) == "--model m: returns [1, 3] for 2 inputs of shape [4]; expected logits of shape [2, 3]"


def test_a_forward_that_fails_is_one_line_unless_meta_tensors_are_the_cause():
    with pytest.raises(InputError) as e:
        check_output(Fails(ValueError("shapes differ\nmore detail")), "lbl", 3, [1, 2, 2])
    assert message(e) == "--model lbl: fails on inputs of shape [1, 2, 2] (ValueError: shapes differ)"
    check_output(Fails(RuntimeError("cannot run on a Meta tensor")), "lbl", 3, [4])
    check_output(Fails(NotImplementedError("no kernel")), "lbl", 3, [4])


def test_starting_weights_from_a_state_dict_a_wrapped_one_or_safetensors(tmp_path):
    """Mutants: the suffix test, the wrapped "state_dict", what is returned for the card."""
    from safetensors.torch import save_file
    source = nn.Linear(2, 3)
    state = source.state_dict()
    torch.save(state, tmp_path / "w.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.ckpt")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "wrapped.ckpt", "w.safetensors"):
        model = nn.Linear(2, 3)
        info = load_init_weights(model, tmp_path / name)
        assert torch.equal(model.weight, source.weight) and torch.equal(model.bias, source.bias)
        assert info == {"file": str((tmp_path / name).resolve()),
                        "sha256": hashlib.sha256((tmp_path / name).read_bytes()).hexdigest(), "tensors": 2}


def test_starting_weights_are_read_without_unpickling_code_whatever_torchs_defaults(tmp_path, monkeypatch):
    """Mutants: the ".safetensors" suffix test (recent torch reads such a file through torch.load
    too, older torch cannot), weights_only=True and map_location="cpu" dropped or changed (torch
    before 2.6 unpickles anything by default; a checkpoint saved on a GPU must load on a CPU)."""
    from safetensors.torch import save_file
    source = nn.Linear(2, 3)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    calls = []
    real = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", load)
    load_init_weights(nn.Linear(2, 3), tmp_path / "w.safetensors")
    assert calls == []
    load_init_weights(nn.Linear(2, 3), tmp_path / "w.pt")
    assert calls == [{"map_location": "cpu", "weights_only": True}]


class OwnLoader(nn.Linear):
    """A model whose load_state_dict refuses in one line of its own."""

    def load_state_dict(self, state, *args, **kwargs):
        raise RuntimeError("refused by the model")


def test_starting_weights_that_are_missing_unreadable_or_do_not_fit_are_one_line(tmp_path):
    model = nn.Linear(2, 3)
    with pytest.raises(InputError) as e:
        load_init_weights(model, tmp_path / "none.pt", "--start")
    assert message(e) == f"--start {tmp_path / 'none.pt'}: no such file"
    with pytest.raises(InputError) as e:
        load_init_weights(model, tmp_path / "none.pt")
    assert message(e) == f"--init-weights {tmp_path / 'none.pt'}: no such file"
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(InputError) as e:
        load_init_weights(model, tmp_path / "junk.pt")
    with pytest.raises(Exception) as raw:
        torch.load(tmp_path / "junk.pt", map_location="cpu", weights_only=True)
    assert len(str(raw.value).splitlines()) > 1       # only the first line is said
    assert message(e) == (f"--init-weights {tmp_path / 'junk.pt'}: unreadable "
                          f"({raw.value.__class__.__name__}: {str(raw.value).splitlines()[0]})")
    torch.save({"model": TopLevel()}, tmp_path / "code.pt")           # not weights only
    with pytest.raises(InputError, match="unreadable"):
        load_init_weights(model, tmp_path / "code.pt")
    for name, obj in [("list.pt", [torch.zeros(1)]), ("mixed.pt", {"weight": torch.zeros(3, 2), "step": 3}),
                      ("wrapped.pt", {"state_dict": {"weight": 1}})]:
        torch.save(obj, tmp_path / name)
        with pytest.raises(InputError) as e:
            load_init_weights(model, tmp_path / name)
        assert message(e) == f"--init-weights {tmp_path / name}: not a state dict of tensors"
    torch.save(nn.Linear(2, 4).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(InputError) as e:
        load_init_weights(model, tmp_path / "wide.pt")
    # A model that is one block has no backbone apart from its classifier: every tensor must fit.
    assert message(e) == (f"--init-weights {tmp_path / 'wide.pt'}: does not fit the model (weight: the weights "
                          f"hold (4, 2), the model has (3, 2))")
    torch.save({"weight": torch.zeros(3, 2)}, tmp_path / "part.pt")
    with pytest.raises(InputError) as e:
        load_init_weights(model, tmp_path / "part.pt")
    assert message(e) == (f"--init-weights {tmp_path / 'part.pt'}: does not fit the model (bias (3,) is missing "
                          f"from the weights)")
    torch.save(nn.Linear(2, 3).state_dict(), tmp_path / "fits.pt")
    with pytest.raises(InputError) as e:
        load_init_weights(OwnLoader(2, 3), tmp_path / "fits.pt")
    assert message(e) == f"--init-weights {tmp_path / 'fits.pt'}: does not fit the model (refused by the model)"


def test_the_list_of_trusted_files_lives_in_the_users_config_and_a_damaged_one_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(trusted_files.TRUST_FILE_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert trusted_files.trust_file() == tmp_path / "xdg" / "edge-sel" / "trusted-model-files.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trusted_files.trust_file() == tmp_path / "home" / ".config" / "edge-sel" / "trusted-model-files.json"
    listed = tmp_path / "list.json"
    monkeypatch.setenv(trusted_files.TRUST_FILE_ENV, str(listed))
    assert trusted_files.trusted_entries() == [] and not listed.exists()
    trusted_files.remember("/a.py", "ab")
    assert json.loads(listed.read_text()) == {"format": "edge-sel-trusted-model-files/1",
                                              "files": [{"path": "/a.py", "sha256": "ab"}]}
    assert listed.stat().st_mode & 0o077 == 0 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    for text in ("{", "[]", '{"format": "other", "files": []}',
                 '{"format": "edge-sel-trusted-model-files/1", "files": [{"path": 1, "sha256": "ab"}]}'):
        listed.write_text(text)
        with pytest.raises(InputError) as e:
            trusted_files.is_trusted("/a.py", "ab")
        assert message(e).startswith(f"{listed}: the list of trusted model files is unreadable (")
        assert message(e).endswith("); remove it (pretrain with --model records it again)")


def test_a_card_file_spec_path_ends_at_its_last_colon_as_when_it_is_read(tmp_path):
    """As _load_file reads `/x/m.py:make:x` (the file `/x/m.py:make`, the name `x`), so do the trust
    check and the record. Mutants: rpartition as partition in either."""
    file = factory_file(tmp_path)
    with pytest.raises(InputError) as e:
        check_card_spec(ModelSpec(f"{file}:make:x", {}, file_digest(file)), "ckpt/model.json")
    assert message(e) == refusal_of(f"{file}:make:x")
    spec_mod.trust_named_file(ModelSpec(f"{file}:make:x", {}, "ab" * 32))
    assert trusted_files.trusted_entries() == [{"path": f"{file}:make", "sha256": "ab" * 32}]


def test_a_file_factory_is_compiled_as_its_own_module_under_its_own_name(tmp_path):
    """Mutants: dont_inherit dropped or False (the file would inherit this module's `from __future__
    import annotations`, and its annotations would turn into strings), the file name in the code
    objects (tracebacks name the user's file)."""
    file = factory_file(tmp_path, "def make(num_classes: int):\n    return num_classes\n")
    make = factory(make_spec(f"{file}:make"))
    try:
        assert make.__annotations__ == {"num_classes": int}
        assert make.__code__.co_filename == str(file)
    finally:
        sys.modules.pop(f"edge_sel_user_model_{file_digest(file)[:16]}", None)


def test_an_import_specs_attribute_may_be_dotted():
    """A class's method of an importable module (the user's own choice, or trusted): mutants of the
    split on dots."""
    assert factory(ModelSpec("json:JSONDecoder.decode")) is json.JSONDecoder.decode


def test_with_no_config_folder_set_the_list_is_under_home(tmp_path, monkeypatch):
    """Mutants: XDG_CONFIG_HOME's default when unset (None, or a word taken for a folder)."""
    monkeypatch.delenv(trusted_files.TRUST_FILE_ENV)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trusted_files.trust_file() == tmp_path / ".config" / "edge-sel" / "trusted-model-files.json"


def test_the_list_is_written_whole_into_new_folders_through_a_hidden_temporary_sibling(tmp_path, monkeypatch):
    """Mutants: mkdir without parents, the temporary file elsewhere or not hidden, the indentation."""
    listed = tmp_path / "a" / "b" / "list.json"
    monkeypatch.setenv(trusted_files.TRUST_FILE_ENV, str(listed))
    moves = []
    real = trusted_files.os.replace

    def replace(src, dst):
        moves.append((Path(src).parent, Path(src).name, Path(dst)))
        real(src, dst)
    monkeypatch.setattr(trusted_files.os, "replace", replace)
    trusted_files.remember("/a.py", "ab")
    assert [(parent, name.startswith(".trusted-"), dst) for parent, name, dst in moves] == [
        (listed.parent, True, listed)]
    assert listed.read_text() == json.dumps({"format": "edge-sel-trusted-model-files/1",
                                             "files": [{"path": "/a.py", "sha256": "ab"}]}, indent=1) + "\n"
    trusted_files.remember("/a.py", "ab")           # already there: not written again
    assert len(moves) == 1


def test_a_list_that_cannot_be_written_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    listed = tmp_path / "list.json"
    monkeypatch.setenv(trusted_files.TRUST_FILE_ENV, str(listed))

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(trusted_files.os, "replace", full)
    with pytest.raises(InputError) as e:
        trusted_files.remember("/a.py", "ab")
    assert message(e) == (f"{listed}: cannot record the trusted model file /a.py (No space left on device); set "
                          f"EDGE_SEL_TRUST_FILE to a writable place")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")                   # a folder that is a file: mkdir fails first
    monkeypatch.setenv(trusted_files.TRUST_FILE_ENV, str(tmp_path / "file" / "list.json"))
    with pytest.raises(InputError, match="cannot record the trusted model file /a.py"):
        trusted_files.remember("/a.py", "ab")


def test_a_list_of_another_shape_says_what_it_should_be(tmp_path, monkeypatch):
    listed = tmp_path / "list.json"
    monkeypatch.setenv(trusted_files.TRUST_FILE_ENV, str(listed))
    listed.write_text("[]")
    with pytest.raises(InputError) as e:
        trusted_files.trusted_entries()
    assert message(e) == (f"{listed}: the list of trusted model files is unreadable (ValueError: not a "
                          f"edge-sel-trusted-model-files/1 list); remove it (pretrain with --model records it again)")
