"""ONNX Runtime sessions for an export directory (edge_sel/predict/ort_session.py) on graphs made
here by hand (one Add node each, a constant that says which graph answered): the plain model, one
session per condition, the threads and waiting policy asked for, and every damaged conditions.json
or graph refused in one line. Milliseconds each."""

import json
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from edge_sel import threads as threads_mod  # noqa: E402
from edge_sel.errors import InputError  # noqa: E402
from edge_sel.predict import ort_session  # noqa: E402


def graph(path, value: float, op: str = "Add"):
    """input [N, 1] + value -> logits."""
    node = helper.make_node(op, ["input", "c"], ["logits"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1])],
                          [helper.make_tensor("c", TensorProto.FLOAT, [1], [value])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def answer(session) -> float:
    return float(session.run(None, {"input": np.zeros((1, 1), np.float32)})[0][0, 0])


def export(directory, conditions=None):
    directory.mkdir()
    graph(directory / "model.onnx", 0.5)
    if conditions is not None:
        (directory / "conditions").mkdir()
        for i in range(2):
            graph(directory / "conditions" / f"{i}.onnx", 10.0 + i)
        (directory / "conditions.json").write_text(json.dumps(conditions))
    return directory


CHOOSER = {"names": ["source", "fog"], "features": "whatever the chooser keeps"}
GOOD = {"chooser": CHOOSER, "files": ["conditions/0.onnx", "conditions/1.onnx"]}


def test_an_export_without_a_bank_or_with_it_unused_is_the_plain_model(tmp_path):
    plain = export(tmp_path / "plain")
    names, sessions, chooser = ort_session.load_sessions(plain, True, None)
    assert (names, chooser, len(sessions)) == (["own"], None, 1) and answer(sessions[0]) == 0.5
    banked = export(tmp_path / "banked", GOOD)
    names, sessions, chooser = ort_session.load_sessions(banked, False, None)
    assert (names, chooser, [answer(s) for s in sessions]) == (["own"], None, [0.5])


def test_a_bank_gives_one_session_per_condition_in_its_order_and_the_chooser(tmp_path):
    banked = export(tmp_path / "banked", {**GOOD, "files": ["conditions/1.onnx", "conditions/0.onnx"]})
    names, sessions, chooser = ort_session.load_sessions(banked, True, 2)
    assert names == ["source", "fog"] and chooser == CHOOSER
    assert [answer(s) for s in sessions] == [11.0, 10.0]
    assert [s.get_session_options().intra_op_num_threads for s in sessions] == [2, 2]      # each its threads
    _, (plain,), _ = ort_session.load_sessions(banked, False, 3)
    assert plain.get_session_options().intra_op_num_threads == 3


@pytest.mark.parametrize("name", ["conditions.json", "model.onnx"])
def test_a_file_the_export_names_by_a_link_out_of_it_is_refused_naming_the_export(tmp_path, name):
    banked = export(tmp_path / "banked", GOOD)
    outside = tmp_path / f"outside-{name}"
    (banked / name).rename(outside)
    (banked / name).symlink_to(outside)
    with pytest.raises(InputError) as e:
        ort_session.load_sessions(banked, name == "conditions.json", None)
    assert str(e.value) == (f"{banked}: {name!r} lies outside {banked}; edge-sel follows no path out of a directory "
                            f"it received")


@pytest.mark.parametrize("text, why", [
    ("not json", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
    (json.dumps({"files": GOOD["files"]}), "KeyError: 'chooser'"),
    (json.dumps({"chooser": {}, "files": GOOD["files"]}), "KeyError: 'names'"),
    (json.dumps({"chooser": CHOOSER}), "KeyError: 'files'"),
    (json.dumps({"chooser": CHOOSER, "files": GOOD["files"][:1]}), "ValueError: one graph file name per condition expected"),
    (json.dumps({"chooser": {"names": []}, "files": []}), "ValueError: one graph file name per condition expected"),
    (json.dumps({"chooser": CHOOSER, "files": ["conditions/0.onnx", 1]}),
     "ValueError: one graph file name per condition expected"),
    (json.dumps({"chooser": {"names": 3}, "files": GOOD["files"]}), "TypeError: 'int' object is not iterable"),
    (json.dumps([1]), "TypeError: list indices must be integers or slices, not str"),
])
def test_a_damaged_conditions_file_is_one_line_naming_it(tmp_path, text, why):
    banked = export(tmp_path / "banked", GOOD)
    (banked / "conditions.json").write_text(text)
    with pytest.raises(InputError) as e:
        ort_session.load_sessions(banked, True, None)
    assert str(e.value) == f"{banked / 'conditions.json'}: unreadable or corrupt ({why})"
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_graph_named_outside_the_export_or_missing_is_refused(tmp_path):
    banked = export(tmp_path / "banked", {**GOOD, "files": ["conditions/0.onnx", "../elsewhere.onnx"]})
    graph(tmp_path / "elsewhere.onnx", 99.0)
    with pytest.raises(InputError, match=r"conditions\.json"):
        ort_session.load_sessions(banked, True, None)
    (banked / "conditions.json").write_text(json.dumps({**GOOD, "files": ["conditions/0.onnx", "conditions/9.onnx"]}))
    with pytest.raises(InputError) as e:
        ort_session.load_sessions(banked, True, None)
    assert str(e.value) == f"{banked / 'conditions' / '9.onnx'}: missing from the export"
    (banked / "model.onnx").unlink()
    with pytest.raises(InputError) as e:
        ort_session.load_sessions(banked, False, None)
    assert str(e.value) == f"{banked / 'model.onnx'}: missing from the export"


def test_a_graph_onnx_runtime_cannot_load_is_one_line(tmp_path):
    bad = graph(tmp_path / "bad.onnx", 1.0, op="NoSuchOp")
    with pytest.raises(InputError) as e:
        ort_session.session(bad, None)
    said = str(e.value)
    assert said.startswith(f"{bad}: ONNX Runtime cannot load it (") and said.endswith(")") and "\n" not in said
    assert "NoSuchOp" in said and e.value.__cause__ is None and e.value.__suppress_context__
    (tmp_path / "torn.onnx").write_bytes(b"\x08garbage")
    with pytest.raises(InputError, match="not an ONNX graph"):
        ort_session.session(tmp_path / "torn.onnx", None)


def test_the_threads_asked_for_and_the_waiting_policy_reach_the_session(tmp_path, monkeypatch):
    path = graph(tmp_path / "m.onnx", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a provider name ORT does not know is only a warning
        s = ort_session.session(path, 3)
    options = s.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert s.get_providers() == ["CPUExecutionProvider"] and answer(s) == 1.0
    s = ort_session.session(path, "2")
    assert s.get_session_options().intra_op_num_threads == 2
    s = ort_session.session(path, None)                     # ORT's own choice
    assert (s.get_session_options().intra_op_num_threads, s.get_session_options().inter_op_num_threads) == (0, 0)
    monkeypatch.setattr(threads_mod, "waiting_is_passive", lambda: True)
    passive = ort_session.session(path, 1).get_session_options()
    assert passive.get_session_config_entry(threads_mod.ORT_SPINNING) == "0"


def test_without_onnxruntime_the_ort_backend_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(InputError) as e:
        ort_session.session(tmp_path / "m.onnx", None)
    assert str(e.value) == "--backend ort: onnxruntime is not installed (pip install 'edge-sel[ort]')"
    assert e.value.__cause__ is None and e.value.__suppress_context__
