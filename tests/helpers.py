"""Small shared helpers for tests: run the CLI in-process and read run directories."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sel.backends.ort_env import require_ort
from edge_sel.cli import cli, main
from edge_sel.core.records import VOLATILE_FIELDS, read_records
from edge_sel.errors import InputError


def _ort_missing() -> str | None:
    """Why the `ort` extra cannot run here (the command's own words), or None where it can.
    onnxruntime-training has no wheels for CPython 3.13 or for aarch64, so there it never installs."""
    try:
        require_ort("the ort extra")
    except InputError as e:
        return (f"{e} (onnxruntime-training 1.19.2, its last release, has wheels for CPython up to 3.12 on "
                f"x86_64 only; this is Python {sys.version_info.major}.{sys.version_info.minor})")
    return None


ORT_MISSING = _ort_missing()
# For a test, a parametrized case (pytest.param(..., marks=needs_ort)) or a module (pytestmark) that
# needs onnx and onnxruntime-training: skipped with the reason where they cannot be imported.
needs_ort = pytest.mark.skipif(ORT_MISSING is not None, reason=ORT_MISSING or "")


def run_cli(*args, expect: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def run_main(argv, capsys) -> tuple[int, str]:
    """`edge-sel ARGV` through main(), its one-line error handling included: exit code and stderr."""
    code, _, err = run_main_said(argv, capsys)
    return code, err


def run_main_said(argv, capsys) -> tuple[int, str, str]:
    """As run_main: exit code, stdout and stderr."""
    old = sys.argv
    sys.argv = ["edge-sel", *map(str, argv)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
            raise SystemExit(0)
    finally:
        sys.argv = old
    said = capsys.readouterr()
    return exit_info.value.code or 0, said.out, said.err


def records(run_dir: Path, baseline: bool = False) -> list[dict]:
    """The epoch records of a run; with `baseline`, the starting checkpoint's evaluation first."""
    recs = read_records(Path(run_dir) / "metrics.jsonl")
    return recs if baseline else [r for r in recs if r.get("phase") != "baseline"]


# The choices the layout and precision probes would measure, fixed: two starts compared bit for bit
# must not depend on timings (a probe taken while other tests load the CPU may choose differently,
# and a run whose step time strays from its probe's measures again at the next start).
SAME_CHOICES = ["--memory-format", "contiguous", "--eval-batch-size", "256", "--precision", "fp32"]
# The same, as TrainConfig fields: a shared warmup whose precision a probe chose (bf16 measured 1.14x
# fp32 here against a 1.11x threshold) gave every test built on it a starting point the load chose.
PINNED_CHOICES = dict(memory_format="contiguous", eval_batch_size=256, precision="fp32")


def stable(recs: list[dict]) -> list[dict]:
    """Records without the fields that measure time, memory or energy."""
    return [{k: v for k, v in r.items() if k not in VOLATILE_FIELDS} for r in recs]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def synthetic_folder(root: Path, size: int = 12, per_class: int = 8) -> Path:
    """The synthetic data's four classes as an image folder, at another size than its 16 px."""
    from PIL import Image
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (60 * c, 25 * i, 90)).save(root / f"class{c}" / f"{i}.png")
    return root


def digits_warmup_with_memory(out: Path) -> Path:
    """A small digits warmup on shard 0/2 that ships its source memory (20 anchors a class: 100
    replayed, 100 held out; the Fisher; the source weights)."""
    from edge_sel.config import TrainConfig
    from edge_sel.engine.runs.data_options import DataOptions
    from edge_sel.engine.runs.run import pretrain
    pretrain("edgecnn", DataOptions("digits", shard="0/2"),
             TrainConfig(epochs=2, batch_size=64, seed=0, anchors_per_class=20, fisher_samples=256, **PINNED_CHOICES),
             out, quiet=True)
    return out


def without_memory(checkpoint: Path, out: Path) -> Path:
    """A copy of a checkpoint's weights and card alone, as a checkpoint from before source memory
    (whose card says nothing of it)."""
    import json
    import shutil
    out.mkdir()
    shutil.copy(Path(checkpoint) / "model.safetensors", out)
    card = json.loads((Path(checkpoint) / "model.json").read_text())
    card.pop("source_memory", None)
    (out / "model.json").write_text(json.dumps(card))
    return out


def with_external_data(graph: Path, location: str, constant: bool = False) -> None:
    """The graph's first initializer (or a Constant node's tensor) keeps its bytes in `location`, as
    ONNX external data: a crafted export that would have ONNX Runtime read that file."""
    import onnx
    model = onnx.load(str(graph))
    if constant:
        init = model.graph.initializer[0]
        model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [init.name + "_c"], value=init))
        tensor = model.graph.node[0].attribute[0].t        # the graph's copy of the node
    else:
        tensor = model.graph.initializer[0]
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph.write_bytes(model.SerializeToString())
