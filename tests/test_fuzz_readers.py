"""Files a device reads but did not write, damaged at random: every reader either loads them or
refuses them in one line (InputError), never another exception, never code run.

Mutations: a truncation at a random length, a random byte flipped, and for JSON files a random
field replaced by a value of another type. Each reader runs on a copy of a real digits checkpoint
or run; hypothesis draws the mutations (its database replays a failing one first).

Under CI (CI set) the draws are derandomized, so a run there is repeatable; elsewhere each run draws
anew. EDGE_SEL_FUZZ_EXAMPLES sets the examples per reader (default 30) for a longer search.
"""

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import digits_warmup_with_memory, run_cli
from edge_sel.core.bn_bank import BANK_FILE, read_bank
from edge_sel.core.source_memory import ANCHORS_FILE, read_source_memory
from edge_sel.engine.loop.state import load_state
from edge_sel.errors import InputError
from edge_sel.models import load_checkpoint

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
