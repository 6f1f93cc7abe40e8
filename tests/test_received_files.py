"""What a device opens of a directory it received, function by function: a name a received file
gives must stay inside that directory (errors.named_inside), and an ONNX graph must hold all its
tensors' data (backends/onnx_files.py). Graphs are built by hand with onnx.helper, a few hundred
bytes each; milliseconds in all."""

import numpy as np
import pytest

from edge_sel.errors import InputError, named_inside

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_sel.backends.onnx_files import all_tensors, self_contained_graph  # noqa: E402


def outside_message(directory, name) -> str:
    return (f"label: {name!r} lies outside {directory}; edge-sel follows no path out of a directory it "
            f"received")


def test_a_name_inside_the_directory_is_that_path(tmp_path):
    (tmp_path / "conditions").mkdir()
    (tmp_path / "conditions" / "0.onnx").write_bytes(b"x")
    assert named_inside(tmp_path, "model.onnx", "label") == tmp_path / "model.onnx"     # need not exist
    assert named_inside(tmp_path, "conditions/0.onnx", "label") == tmp_path / "conditions" / "0.onnx"
    assert named_inside(tmp_path, "conditions/../model.onnx", "label") == tmp_path / "conditions/../model.onnx"
    (tmp_path / "inner.onnx").symlink_to(tmp_path / "conditions" / "0.onnx")          # a link within
    assert named_inside(tmp_path, "inner.onnx", "label") == tmp_path / "inner.onnx"
    assert named_inside(str(tmp_path), "model.onnx", "label") == tmp_path / "model.onnx"


@pytest.mark.parametrize("name", [5, None, "", [], {"a": 1}, 1.5, True])
def test_a_name_that_is_not_a_string_is_one_line(tmp_path, name):
    with pytest.raises(InputError) as e:
        named_inside(tmp_path, name, "label")
    assert str(e.value) == f"label: expected the name of a file in {tmp_path}, got {name!r}"


def test_a_name_out_of_the_directory_is_refused_however_it_gets_there(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"s")
    (root / "out.onnx").symlink_to(tmp_path / "secret.bin")
    (root / "loop.onnx").symlink_to(root / "loop.onnx")
    (root / "dir").symlink_to(tmp_path)
    for name in ("../secret.bin", str(tmp_path / "secret.bin"), str(root / "model.onnx"), "a/../../secret.bin",
                 "out.onnx", "dir/secret.bin", "loop.onnx", "bad\0name", ".."):
        with pytest.raises(InputError) as e:
            named_inside(root, name, "label")
        assert str(e.value) == outside_message(root, name), name


def test_a_directory_reached_through_a_link_holds_what_lies_in_its_target(tmp_path):
    """The received directory itself may be a link (a deployed link to its version)."""
    (tmp_path / "version").mkdir()
    (tmp_path / "deployed").symlink_to(tmp_path / "version")
    assert named_inside(tmp_path / "deployed", "model.onnx", "l") == tmp_path / "deployed" / "model.onnx"


def tiny_graph(**extra) -> "onnx.ModelProto":
    w = numpy_helper.from_array(np.ones(3, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [w], **extra)
    return helper.make_model(graph)


def external(tensor, location: str | None = "../secret.bin", flag: bool = True):
    if flag:
        tensor.data_location = TensorProto.EXTERNAL
    if location is not None:
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
    entry = tensor.external_data.add()
    entry.key, entry.value = "offset", "0"
    return tensor


def save(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def test_a_graph_holding_its_data_is_returned_as_the_bytes_read(tmp_path):
    path = save(tiny_graph(), tmp_path / "m.onnx")
    assert self_contained_graph(path) == path.read_bytes()
    assert self_contained_graph(str(path)) == path.read_bytes()


def refusal(path, name, location) -> str:
    return (f"{path}: tensor {name!r} keeps its data in another file ({location!r}); edge-sel opens only graphs "
            f"that hold all their data")


@pytest.mark.parametrize("flag, location", [(True, "../secret.bin"), (True, "/etc/passwd"), (True, "w.bin"),
                                            (False, "../secret.bin"), (True, None)])
def test_an_initializer_kept_in_another_file_is_refused(tmp_path, flag, location):
    """Whether the location flag is set or only the external entries are there (ONNX Runtime reads
    either), and whatever the location says."""
    model = tiny_graph()
    external(model.graph.initializer[0], location, flag)
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(InputError) as e:
        self_contained_graph(path)
    assert str(e.value) == refusal(path, "w", location if location is not None else "?")


def constant(name: str) -> "onnx.NodeProto":
    return helper.make_node("Constant", [], [name], value=external(numpy_helper.from_array(np.ones(1, np.float32),
                                                                                        name)))


def test_tensors_in_nodes_subgraphs_sparse_initializers_and_functions_are_all_seen(tmp_path):
    """Mutants: each place a tensor can live dropped from the walk."""
    cases = {}
    m = tiny_graph()
    m.graph.node.insert(0, constant("in_node"))
    cases["in_node"] = m
    m = tiny_graph()
    node = helper.make_node("Constant", [], ["many"])
    attr = node.attribute.add()
    attr.name, attr.type = "value_floats_as_tensors", onnx.AttributeProto.TENSORS
    attr.tensors.append(external(numpy_helper.from_array(np.ones(1, np.float32), "in_list")))
    m.graph.node.append(node)
    cases["in_list"] = m
    m = tiny_graph()
    sparse = helper.make_sparse_tensor(external(numpy_helper.from_array(np.ones(1, np.float32), "sparse_values")),
                                       numpy_helper.from_array(np.zeros(1, np.int64), "sparse_indices"), [3])
    m.graph.sparse_initializer.append(sparse)
    cases["sparse_values"] = m
    m = tiny_graph()
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(1, np.float32), "v"),
                                       external(numpy_helper.from_array(np.zeros(1, np.int64), "sparse_indices")), [3])
    m.graph.sparse_initializer.append(sparse)
    cases["sparse_indices"] = m
    m = tiny_graph()
    node = helper.make_node("Constant", [], ["s"], sparse_value=helper.make_sparse_tensor(
        external(numpy_helper.from_array(np.ones(1, np.float32), "node_sparse")),
        numpy_helper.from_array(np.zeros(1, np.int64), "i"), [3]))
    m.graph.node.append(node)
    cases["node_sparse"] = m
    m = tiny_graph()
    node = helper.make_node("Constant", [], ["ss"])
    attr = node.attribute.add()
    attr.name, attr.type = "sparse_list", onnx.AttributeProto.SPARSE_TENSORS
    attr.sparse_tensors.append(helper.make_sparse_tensor(
        external(numpy_helper.from_array(np.ones(1, np.float32), "sparse_in_list")),
        numpy_helper.from_array(np.zeros(1, np.int64), "i"), [3]))
    m.graph.node.append(node)
    cases["sparse_in_list"] = m
    branch = helper.make_graph([constant("in_branch")], "then", [],
                               [helper.make_tensor_value_info("in_branch", TensorProto.FLOAT, [1])])
    m = tiny_graph()
    m.graph.node.append(helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch))
    cases["in_branch"] = m
    body = helper.make_graph([], "body", [], [],
                             [external(numpy_helper.from_array(np.ones(1, np.float32), "in_graphs"))])
    m = tiny_graph()
    node = helper.make_node("Scan", ["x"], ["q"], num_scan_inputs=1)
    attr = node.attribute.add()
    attr.name, attr.type = "bodies", onnx.AttributeProto.GRAPHS
    attr.graphs.append(body)
    m.graph.node.append(node)
    cases["in_graphs"] = m
    m = tiny_graph()
    m.functions.append(helper.make_function("local", "f", [], ["in_function"], [constant("in_function")],
                                            [helper.make_opsetid("", 17)]))
    cases["in_function"] = m
    for name, model in cases.items():
        assert name in {t.name for t in all_tensors(model)}, name
        path = save(model, tmp_path / f"{name}.onnx")
        with pytest.raises(InputError) as e:
            self_contained_graph(path)
        assert str(e.value) == refusal(path, name, "../secret.bin"), name


def test_what_is_not_an_onnx_graph_is_one_line(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(InputError) as e:
        self_contained_graph(path)
    assert str(e.value) == f"{path}: not an ONNX graph (DecodeError)"
