"""Files a device reads but did not write, damaged at random: every reader either loads them or
refuses them in one line (InputError), never another exception, never code run.

Mutations: a truncation at a random length, a random byte flipped, and for JSON files a random
field replaced by a value of another type. Each reader runs on a copy of a real digits checkpoint,
run or export; hypothesis draws the mutations (its database replays a failing one first). The files:
the card, the bank, the anchors, a run's state, an export's manifest.json, conditions.json and ONNX
graphs, and an image.

A second class of mutations tries to run code or to read outside: a card's model spec drawn from
a file the checkpoint ships (with its own digest, none or another), named by an absolute, relative
or `..` path or through a link, by a plain, dotted or imported name, and import specs; an export's
conditions.json naming a graph by `..`, an absolute path, a link or not a string, and graphs whose
tensor data lives in another file. None of them may load: each is refused in one line, with no code
run (the shipped code would write a marker) and no file outside read.

Under CI (CI set) the draws are derandomized, so a run there is repeatable; elsewhere each run draws
anew. EDGE_SEL_FUZZ_EXAMPLES sets the examples per reader (default 30) for a longer search.
"""

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import digits_warmup_with_memory, run_cli, with_external_data
from edge_sel.backends.ort_manifest import resolve
from edge_sel.core.bn_bank import BANK_FILE, read_bank
from edge_sel.core.source_memory import ANCHORS_FILE, read_source_memory
from edge_sel.engine.loop.state import load_state
from edge_sel.errors import InputError
from edge_sel.models import load_checkpoint
from edge_sel.models import spec as spec_mod
from edge_sel.models.spec import TRUST_ENV
from edge_sel.predict.images import read_image
from edge_sel.predict.predictor import Predictor, read_card_of_export

pytestmark = pytest.mark.usefixtures("one_thread")
FUZZ = settings(max_examples=int(os.environ.get("EDGE_SEL_FUZZ_EXAMPLES", "30")), deadline=None,
                derandomize=bool(os.environ.get("CI")), suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    warm = digits_warmup_with_memory(root / "warm")
    out = root / "banked"
    run_cli("finetune", "--checkpoint", warm, "--epochs", "1", "--out", out, "--bn-conditions", "2",
            "--dataset", "digits", "--shard", "1/2", "--shift", "corrupt=contrast:4", "--quiet",
            "--batch-size", "64", "--checkpoint-every", "0")
    return out


@pytest.fixture(scope="module")
def exported(banked, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    art = tmp_path_factory.mktemp("fuzz-export") / "art"
    run_cli("export", "--checkpoint", banked, "--out", art, "--scheme", "classifier", "--quiet")
    return art


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image
    folder = tmp_path_factory.mktemp("fuzz-image")
    Image.effect_noise((8, 8), 60).save(folder / "frame.png")
    return folder


mutation = st.tuples(st.sampled_from(["truncate", "flip", "json"]), st.floats(0, 1, exclude_max=True),
                     st.integers(1, 255), st.sampled_from([None, -1, 1.5, "x", [], {}, True, 10**12]))


def mutate(data: bytes, how) -> bytes:
    kind, where, xor, value = how
    at = int(where * len(data))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ xor]) + data[at + 1:]
    try:
        doc = json.loads(data)
    except ValueError:
        return data[:at]
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + [k])
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append(path + [i])
                walk(v, path + [i])
    walk(doc, [])
    if not paths:
        return data[:at]
    path = paths[int(where * len(paths))]
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()


def damaged(src: Path, name: str, how, tmp: Path) -> Path:
    target = tmp / "copy"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src, target)
    path = target / name
    path.write_bytes(mutate(path.read_bytes(), how))
    return target


def loads_or_refuses(read) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read()
    except InputError as e:
        assert "\n" not in str(e).strip()


@FUZZ
@given(how=mutation)
def test_model_json(banked, tmp_path_factory, how):
    copy = damaged(banked, "model.json", how, tmp_path_factory.mktemp("m"))
    loads_or_refuses(lambda: load_checkpoint(copy))


@FUZZ
@given(how=mutation)
def test_bn_bank(banked, tmp_path_factory, how):
    model, _ = load_checkpoint(banked)
    copy = damaged(banked, BANK_FILE, how, tmp_path_factory.mktemp("b"))
    loads_or_refuses(lambda: read_bank(copy, [1, 8, 8], model))


@FUZZ
@given(how=mutation)
def test_anchors(banked, tmp_path_factory, how):
    copy = damaged(banked, ANCHORS_FILE, how, tmp_path_factory.mktemp("a"))
    loads_or_refuses(lambda: read_source_memory(copy, [1, 8, 8]))


@FUZZ
@given(how=mutation)
def test_run_state(banked, tmp_path_factory, how):
    state = banked / "state"
    name = sorted(p.name for p in state.iterdir() if p.is_file())[0]
    copy = damaged(state, name, how, tmp_path_factory.mktemp("s"))
    loads_or_refuses(lambda: load_state(copy))


@FUZZ
@given(how=mutation)
def test_export_manifest(exported, tmp_path_factory, how):
    copy = damaged(exported, "manifest.json", how, tmp_path_factory.mktemp("e"))
    loads_or_refuses(lambda: Predictor(copy, backend="ort"))
    loads_or_refuses(lambda: resolve(copy / "classifier"))


@FUZZ
@given(how=mutation)
def test_export_conditions(exported, tmp_path_factory, how):
    copy = damaged(exported, "conditions.json", how, tmp_path_factory.mktemp("c"))
    loads_or_refuses(lambda: Predictor(copy, backend="ort"))


@FUZZ
@given(how=mutation, graph=st.sampled_from(["model.onnx", "conditions/0.onnx", "classifier/eval_model.onnx"]))
def test_export_graphs(exported, tmp_path_factory, how, graph):
    copy = damaged(exported, graph, how, tmp_path_factory.mktemp("g"))
    loads_or_refuses(lambda: Predictor(copy, backend="ort"))
    loads_or_refuses(lambda: Predictor(copy, backend="ort", use_bank=False))
    loads_or_refuses(lambda: resolve(copy / "classifier"))


@FUZZ
@given(how=mutation)
def test_image(image, tmp_path_factory, how):
    copy = damaged(image, "frame.png", how, tmp_path_factory.mktemp("i"))
    loads_or_refuses(lambda: read_image(copy / "frame.png", [1, 8, 8], resize=True))


# -- mutations that try to run code or read outside: never loaded

SECRET = b"OUTSIDE-SECRET"


def refused(read, marker: Path) -> None:
    with pytest.raises(InputError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read()
    assert "\n" not in str(e.value).strip() and SECRET.decode() not in str(e.value)
    assert not marker.exists()


code_spec = st.tuples(st.sampled_from(["absolute", "relative", "dotdot", "link"]),
                      st.sampled_from(["build", "Outer.build", "os.system", "hub_load", "torch.hub.load"]),
                      st.sampled_from(["own", "none", "other"]))


@FUZZ
@given(spec=code_spec, import_name=st.sampled_from([None, "torch.hub:load", "os:system", "torchvision:resnet18"]))
def test_a_card_naming_code_is_never_loaded(banked, tmp_path_factory, monkeypatch, spec, import_name):
    """A file the checkpoint ships, named however a card can, or code to import: none is trusted on
    this machine (no pretrain here named it, no --trust-model-code), so none loads."""
    monkeypatch.setenv(TRUST_ENV, "0")
    monkeypatch.setattr(spec_mod, "_CHOSEN", set())
    tmp = tmp_path_factory.mktemp("code")
    copy = tmp / "copy"
    shutil.copytree(banked, copy, ignore=shutil.ignore_patterns("state"))
    marker = tmp / "ran"
    helper = copy / "helper.py"
    helper.write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom torch.hub import load as hub_load\n"
                      "from edge_sel.models import EdgeCNN\n\nclass Outer:\n    build = staticmethod(lambda **k: None)\n\n"
                      "def build(num_classes, in_channels=1):\n    return EdgeCNN(num_classes, in_channels)\n")
    form, attr, digest = spec
    (tmp / "link.py").symlink_to(helper)
    path = {"absolute": str(helper), "relative": "helper.py", "dotdot": "../copy/helper.py",
            "link": str(tmp / "link.py")}[form]
    monkeypatch.chdir(copy)          # where a relative path would find the shipped file
    sha = {"own": hashlib.sha256(helper.read_bytes()).hexdigest(), "none": None, "other": "ab" * 32}[digest]
    model = {"name": f"{path}:{attr}", "kind": "file", "kwargs": {}, **({"file_sha256": sha} if sha else {})}
    if import_name is not None:
        model = {"name": import_name, "kind": "import", "kwargs": {}}
    card = json.loads((copy / "model.json").read_text())
    card["model"] = model
    (copy / "model.json").write_text(json.dumps(card))
    refused(lambda: load_checkpoint(copy), marker)


outside_graph = st.sampled_from(["dotdot", "absolute", "link", "number", "external-outside", "external-absolute",
                                 "external-inside"])


@FUZZ
@given(how=outside_graph, which=st.integers(0, 1), bank=st.booleans())
def test_an_export_reaching_outside_is_never_loaded(exported, tmp_path_factory, how, which, bank):
    tmp = tmp_path_factory.mktemp("out")
    copy = tmp / "copy"
    shutil.copytree(exported, copy)
    (tmp / "secret.bin").write_bytes(SECRET * 4096)
    shutil.copy(copy / "model.onnx", tmp / "elsewhere.onnx")
    conditions = json.loads((copy / "conditions.json").read_text())
    if how.startswith("external"):
        graph = copy / (conditions["files"][which] if bank else "model.onnx")
        location = {"external-outside": "../" * (graph.parent != copy) + "../secret.bin",
                    "external-absolute": str(tmp / "secret.bin"), "external-inside": "weights.bin"}[how]
        shutil.copy(tmp / "secret.bin", graph.parent / "weights.bin")
        with_external_data(graph, location)
    else:
        bank = True
        (copy / "link.onnx").symlink_to(tmp / "elsewhere.onnx")
        conditions["files"][which] = {"dotdot": "../elsewhere.onnx", "absolute": str(tmp / "elsewhere.onnx"),
                                      "link": "link.onnx", "number": 7}[how]
        (copy / "conditions.json").write_text(json.dumps(conditions))
    refused(lambda: Predictor(copy, backend="ort", use_bank=bank), tmp / "never")


# ---- JSON nested past the parser's recursion limit, and JSON too large -------------------------

NESTED = {"arrays": b"[" * 100_000, "objects": b'{"a":' * 100_000, "closed": b"[" * 5_000 + b"]" * 5_000}


def nested_readers(tmp: Path, data: bytes):
    """(reader, file it reads) for every JSON a device reads from a directory it did not write."""
    from edge_sel.backends.ort_manifest import read_manifest
    from edge_sel.core.checkpoint import read_card
    from edge_sel.engine.night.promote import read_run
    from edge_sel.engine.night.promote_guard import source_anchor_acc
    from edge_sel.engine.runs.run import resume
    from edge_sel.fleet.rundir import saved_config
    from edge_sel.methods.select.stages import parse_stages
    from edge_sel.models.trusted_files import trusted_entries
    from edge_sel.profiles import load_profile
    (tmp / "run").mkdir()
    for name in ("model.json", "config.json", "summary.json", "manifest.json", "trusted.json", "stages.json"):
        (tmp / name).write_bytes(data)
    for name in ("summary.json", "config.json", "model.json", "model.safetensors"):
        (tmp / "run" / name).write_bytes(data)
    (tmp / "profile.toml").write_bytes(b"a = " + data.replace(b"{", b"[").replace(b'"a":', b""))
    os.environ["EDGE_SEL_TRUST_FILE"] = str(tmp / "trusted.json")
    return [(lambda: read_card(tmp), "model.json"), (lambda: resume(tmp), "config.json"),
            (lambda: read_manifest(tmp), "manifest.json"), (lambda: read_card_of_export(tmp), "manifest.json"),
            (lambda: saved_config(tmp), "config.json"), (lambda: read_run(tmp / "run"), "summary.json"),
            (lambda: source_anchor_acc(tmp / "run"), "model.json"),
            (trusted_entries, "trusted.json"), (lambda: parse_stages(str(tmp / "stages.json")), "stages.json"),
            (lambda: load_profile(str(tmp / "profile.toml")), "profile.toml")]


@pytest.mark.parametrize("nesting", NESTED, ids=list(NESTED))
def test_json_nested_deeper_than_the_parser_goes_is_one_line(tmp_path, monkeypatch, nesting):
    """100,000 `[` in model.json exited 1 with a 55-line traceback (a RecursionError no reader
    caught); every reader now refuses it as the malformed file it is, naming the file."""
    monkeypatch.setenv("EDGE_SEL_TRUST_FILE", "")
    for read, name in nested_readers(tmp_path, NESTED[nesting]):
        try:
            read()
        except InputError as e:
            assert "\n" not in str(e) and (name in str(e) or str(tmp_path) in str(e)), (name, str(e))
        else:
            assert nesting == "closed", name      # 5,000 levels closed: within the parser's reach or refused


def test_json_nested_too_deeply_inside_a_received_value_is_no_recursion_error():
    """JSON carried as a string inside a received record (a fleet run's method, the server's model
    card and round plan) or given as an option's value went to json.loads: a RecursionError."""
    from edge_sel.fleet.local import RoundPlan
    from edge_sel.models.spec import parse_model_args
    from edge_sel.report.runs import describe_fleet
    deep = "[" * 100_000
    assert describe_fleet({"method": deep}) == describe_fleet({"method": "[]"}) == "fleet dense"
    assert parse_model_args([f"widths={deep}"]) == {"widths": deep}          # not JSON: kept as the text
    plan = {"fleet-round": 1, "epochs": 1, "batch-size": 8, "optimizer": "sgd", "lr": 0.1, "strategy": "dense",
            "sparsity": "none", "backend": "torch", "method": deep, "keep": "last", "seed": 0}
    with pytest.raises(InputError, match="fleet round configuration: missing or bad field"):
        RoundPlan.from_config(plan)


def test_a_json_file_larger_than_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from edge_sel import errors
    from edge_sel.core.checkpoint import read_card
    monkeypatch.setattr(errors, "JSON_LIMIT", 1000)
    (tmp_path / "model.json").write_bytes(b" " * 1001 + b"{}")
    with pytest.raises(InputError) as e:
        read_card(tmp_path)
    assert str(e.value) == (f"--checkpoint {tmp_path / 'model.json'}: 1,003 bytes, more than the 1,000 such a file "
                            f"may hold")
