"""An ONNX graph a device received, read so that it brings nothing from outside itself.

ONNX lets a tensor keep its bytes in another file (`data_location` EXTERNAL, a `location` relative
to the graph, or anywhere with `..`); ONNX Runtime reads that file when it opens the graph, so a
graph from elsewhere could put a file of the device (`../secret.bin`) into its logits. A received
graph must hold every tensor itself: one that does not is refused before ONNX Runtime sees it, and
the bytes checked are the bytes handed over.
"""

from __future__ import annotations

from pathlib import Path

from edge_sel.errors import InputError


def _sparse(sparse):
    yield sparse.values
    yield sparse.indices


def _node_tensors(node):
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield from _sparse(a.sparse_tensor)
        for s in a.sparse_tensors:
            yield from _sparse(s)
        if a.HasField("g"):
            yield from _graph_tensors(a.g)
        for g in a.graphs:
            yield from _graph_tensors(g)


def _graph_tensors(graph):
    yield from graph.initializer
    for s in graph.sparse_initializer:
        yield from _sparse(s)
    for node in graph.node:
        yield from _node_tensors(node)


def all_tensors(model):
    """Every tensor of a ModelProto: initializers, constants in nodes, subgraphs', functions'."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def self_contained_graph(path: Path) -> bytes:
    """The bytes of the ONNX graph at `path`, which keeps every tensor's data inside itself."""
    import onnx
    from google.protobuf.message import DecodeError

    data = Path(path).read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: not an ONNX graph ({e.__class__.__name__})") from None
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
            raise InputError(f"{path}: tensor {tensor.name!r} keeps its data in another file ({where!r}); "
                             f"edge-sel opens only graphs that hold all their data")
    return data
