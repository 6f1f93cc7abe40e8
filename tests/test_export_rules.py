"""The export package piece by piece on an untrained 8 x 8 edgecnn (no training, so a whole export
takes about a second): the options it refuses, the operators it names, the manifest's figures
against the files, each condition's graph against its statistics, the training graphs' loss,
optimizer and BatchNorm, and what the command prints."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.training.api")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from helpers import run_main, run_main_said  # noqa: E402
from edge_sel.backends.ort_env import versions  # noqa: E402
from edge_sel.backends.ort_manifest import sha256_file, weights_digest  # noqa: E402
from edge_sel.backends.ort_schemes import SCHEME_NOTES, trainable_names  # noqa: E402
from edge_sel.core.bn_bank import BANK_FILE, SavedCondition, write_bank  # noqa: E402
from edge_sel.core.checkpoint import ModelCard, save_checkpoint  # noqa: E402
from edge_sel.core.flops import FlopCounter  # noqa: E402
from edge_sel.errors import InputError  # noqa: E402
from edge_sel.export import artifacts, cli, exporter, onnx_graph  # noqa: E402
from edge_sel.models import build_model, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = [1, 8, 8]


def tiny_checkpoint(out: Path, bank: bool) -> Path:
    """An untrained edgecnn for 1 x 8 x 8 images with running statistics that are not the defaults,
    and (with `bank`) two conditions whose statistics differ from the model's and each other's."""
    torch.manual_seed(0)
    model = build_model("edgecnn", 10, in_channels=1, input_shape=SHAPE)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for _, m in layers:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    card = ModelCard("edgecnn", 10, [f"c{i}" for i in range(10)], SHAPE, [0.5], [0.25])
    save_checkpoint(out, model, card)
    if bank:
        g = torch.Generator().manual_seed(1)
        conditions = []
        for k, name in enumerate(("source", "fog")):
            stats = {n: (torch.rand(m.num_features, generator=g) - 0.5 + k, torch.rand(m.num_features, generator=g) + 0.5)
                     for n, m in layers}
            images = torch.randint(0, 256, (4, *SHAPE), generator=g, dtype=torch.uint8)
            conditions.append(SavedCondition(name, images, stats, fingerprint=(torch.zeros(3), torch.ones(3))))
        write_bank(out / BANK_FILE, conditions)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("export") / "ckpt", bank=True)


# ---- options refused before anything is written ------------------------------------------------

def test_the_optimizer_options_resolve_to_what_ort_builds():
    assert exporter.resolve_optimizer("sgd", None) == {"name": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                                                       "note": "plain SGD: no momentum, no weight decay"}
    assert exporter.resolve_optimizer("sgd", 0.0)["name"] == "sgd"
    adamw = {"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 5e-4,
             "note": "torch.optim.AdamW semantics (decoupled decay applied before the update)"}
    assert exporter.resolve_optimizer("adamw", None) == adamw
    assert exporter.resolve_optimizer("adamw", 0.0)["weight_decay"] == 0.0       # zero is a choice, not the default
    assert exporter.resolve_optimizer("adamw", 0.1)["weight_decay"] == 0.1
    for args, said in ((("sgd", 0.1), "--weight-decay: ORT's SGD has no weight decay; use --optimizer adamw for decay"),
                       (("adamw", -0.1), "--weight-decay: must be >= 0, got -0.1"),
                       (("lion", None), "--optimizer: ORT artifacts carry sgd or adamw, got 'lion'")):
        with pytest.raises(InputError) as e:
            exporter.resolve_optimizer(*args)
        assert str(e.value) == said


@pytest.mark.parametrize("kwargs, said", [
    ({"bn_mode": "frozen"}, "--bn-mode: choose one of eval, train, got 'frozen'"),
    ({"schemes": []}, "--scheme: name at least one scheme"),
    ({"schemes": ["classifier", "half"]}, "--scheme: unknown scheme 'half'; choose from full, last-block, classifier, bias"),
])
def test_bad_options_are_refused_before_the_output_is_made(ckpt, tmp_path, kwargs, said):
    with pytest.raises(InputError) as e:
        exporter.export_artifacts(ckpt, tmp_path / "out", **kwargs)
    assert str(e.value) == said and not (tmp_path / "out").exists()


def test_an_output_inside_the_checkpoint_is_refused_unless_the_same_command_wrote_both(ckpt, tmp_path):
    """The refusal names the checkpoint by its option, --checkpoint (mutated: "XX--checkpointXX")."""
    import shutil
    own = shutil.copytree(ckpt, tmp_path / "own")
    with pytest.raises(InputError) as e:
        exporter.export_artifacts(own, own / "artifacts", ["classifier"])
    assert str(e.value) == (f"--out {own / 'artifacts'}: lies inside --checkpoint {own}, which this command reads; "
                            f"an output never replaces an input: choose another --out")
    assert not (own / "artifacts").exists()
    manifest = exporter.export_artifacts(own, own / "artifacts", ["classifier"], own_checkpoint=True)
    assert (own / "artifacts" / "manifest.json").is_file() and list(manifest["schemes"]) == ["classifier"]


def test_the_python_api_replaces_no_existing_output_unless_told_to(ckpt, tmp_path):
    """export_artifacts' overwrite defaults to False (mutated: True) for a caller that leaves it out."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(InputError) as e:
        exporter.export_artifacts(ckpt, taken, ["classifier"])
    assert str(e.value) == f"--out {taken}: already exists and is not empty; pass --overwrite to replace it"
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("message, op, node", [
    ("... gradient builder has not been registered: Einsum for node einsum_7 ...", "Einsum", "einsum_7"),
    ("Exporting the operator 'aten::fft_rfft2' to ONNX opset version 17 is not supported", "aten::fft_rfft2", None),
    ("Exporting the operator aten::unique to ONNX opset version 17 is not supported", "aten::unique", None),
    ("[ONNXRuntimeError] : 1 : FAIL : No Op registered for Foo with domain_version of 17", "Foo", None),
])
def test_an_unsupported_operator_is_found_in_each_kind_of_message(message, op, node):
    assert exporter.unsupported_operator(message) == (op, node)


def test_other_messages_name_no_operator():
    assert exporter.unsupported_operator("shape mismatch in Conv") is None


def test_an_unsupported_operator_becomes_one_line_naming_it_and_other_errors_pass(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(InputError) as e:
        with exporter.refusing_unsupported(out, "mynet", "the 'full' training artifacts"):
            raise RuntimeError("gradient builder has not been registered: Einsum for node e7")
    assert str(e.value) == (f"export {out}: model mynet uses operator Einsum (node e7), which ONNX Runtime training "
                            f"cannot differentiate; the 'full' training artifacts cannot be made (replace that layer, "
                            f"or train with --backend torch)")
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(InputError) as e:
        with exporter.refusing_unsupported(out, "mynet", "the inference model"):
            raise RuntimeError("Exporting the operator 'aten::unique' to ONNX opset version 17 is not supported")
    assert str(e.value) == (f"export {out}: model mynet uses operator aten::unique, which ONNX export does not "
                            f"support; the inference model cannot be made (replace that layer, or train with "
                            f"--backend torch)")
    with pytest.raises(ValueError, match="other"):
        with exporter.refusing_unsupported(out, "mynet", "x"):
            raise ValueError("other")
    with exporter.refusing_unsupported(out, "mynet", "x") as guard:
        assert guard.out == out
    assert guard.__exit__(None, None, None) is False


def test_an_export_that_meets_an_unsupported_operator_names_it_its_model_and_the_files_and_leaves_nothing(
        ckpt, tmp_path, monkeypatch):
    """The export's own guards say --out, the checkpoint's architecture and what could not be made
    (mutated: any of the three None or reworded, or _export given no --out)."""
    out = tmp_path / "art"

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::unique' to ONNX opset version 17 is not supported")
    with monkeypatch.context() as m:
        m.setattr(onnx_graph, "export_inference", unsupported)
        with pytest.raises(InputError) as e:
            exporter.export_artifacts(ckpt, out, ["classifier"])
    assert str(e.value) == (f"export {out}: model edgecnn uses operator aten::unique, which ONNX export does not "
                            f"support; the inference model cannot be made (replace that layer, or train with "
                            f"--backend torch)")
    assert os.listdir(tmp_path) == []

    def no_gradient(*args, **kwargs):
        raise RuntimeError("gradient builder has not been registered: Einsum for node einsum_7")
    monkeypatch.setattr(artifacts, "generate_scheme", no_gradient)
    with pytest.raises(InputError) as e:
        exporter.export_artifacts(ckpt, out, ["bias"])
    assert str(e.value) == (f"export {out}: model edgecnn uses operator Einsum (node einsum_7), which ONNX Runtime "
                            f"training cannot differentiate; the 'bias' training artifacts cannot be made (replace "
                            f"that layer, or train with --backend torch)")
    assert os.listdir(tmp_path) == []


def test_a_planned_scheme_takes_the_runs_memory_plan_or_is_refused(tmp_path):
    params = {"a.weight": 4, "b.bias": 2}
    config = tmp_path / "config.json"
    said = (f"--scheme planned: {config} holds no memory plan that chose what trains (a run of --memory-budget "
            f"with --sparsity budget)")
    for text in (None, "not json", "[]", '{"memory_plan": null}', '{"memory_plan": []}',
                 '{"memory_plan": {"trainable": []}}', '{"memory_plan": {"trainable": "a.weight"}}',
                 '{"memory_plan": {"trainable": ["a.weight", 3]}}', '{"memory_plan": {"trainable": ["c.weight"]}}',
                 '{"memory_plan": "budget"}'):
        if text is not None:
            config.write_text(text)
        with pytest.raises(InputError) as e:
            exporter.planned_names(tmp_path, params)
        assert str(e.value) == said, text
    config.write_text('{"memory_plan": {"trainable": ["b.bias"]}}')
    assert exporter.planned_names(tmp_path, params) == ["b.bias"]


# ---- what an export holds ---------------------------------------------------------------------

def test_an_export_with_frozen_batchnorm_and_plain_sgd(ckpt, tmp_path):
    """The classifier and bias sets; each check below reads this one export (a test that makes
    what it checks, so a mutation testing tool links the two)."""
    art = tmp_path / "eval"
    manifest = exporter.export_artifacts(ckpt, art, ["classifier", "bias"])
    for check in (check_the_manifest_states_the_files_and_figures_it_was_made_with,
                  check_each_scheme_states_what_trains_and_its_files, check_the_backward_counts_are_the_graphs,
                  check_each_condition_is_a_graph_with_its_statistics_and_the_chooser,
                  check_the_inference_model_is_the_checkpoints_with_its_own_statistics,
                  check_the_training_graphs_weigh_each_sample_and_name_their_outputs, check_sgd_is_ort_own_optimizer):
        check(ckpt, art, manifest)


def test_an_export_with_train_mode_batchnorm_adamw_and_ort_files(ckpt, tmp_path):
    art = tmp_path / "train"
    manifest = exporter.export_artifacts(ckpt, art, ["classifier"], bn_mode="train", optimizer="adamw",
                                         weight_decay=0.01, ort_format=True)
    check_train_mode_batchnorm_adamw_and_ort_files(ckpt, art, manifest)
    check_the_print_has_no_bias_note_without_the_bias_scheme(ckpt, art, manifest)


def check_the_manifest_states_the_files_and_figures_it_was_made_with(ckpt, art, manifest):
    model, card = load_checkpoint(ckpt)
    assert json.loads((art / "manifest.json").read_text())["schemes"] == manifest["schemes"]
    assert manifest["format"] == "edge-sel-ort-artifacts/1" and manifest["class_names"] == card.class_names
    assert manifest["checkpoint"] == {
        "path": str(ckpt), "architecture": "edgecnn", "num_classes": 10,
        "weights_sha256": sha256_file(ckpt / "model.safetensors"), "weights_digest": weights_digest(model),
        "tensors": {k: list(v.shape) for k, v in model.state_dict().items()}, "training": {}}
    assert manifest["input"] == {"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32",
                                 "normalization": {"mean": [0.5], "std": [0.25], "source": "dataset"},
                                 "preprocess": "x = (pixels / 255 - mean[c]) / std[c], NCHW float32"}
    inf = manifest["inference_model"]
    assert inf["file"] == "model.onnx" and inf["opset"] == 17 and inf["outputs"] == ["logits"]
    assert inf["sha256"] == sha256_file(art / "model.onnx") and inf["checked_batch_sizes"] == [8, 3]
    assert 0 <= inf["max_abs_diff_vs_torch"] <= inf["tolerance"] == 1e-4
    assert inf["flops_forward_per_image"] == FlopCounter(model, SHAPE).eval_batch(1) > 0
    assert inf["flops_note"] == ("counted FLOPs of one image's forward pass (torch's FLOP counter on the exported "
                                 "model, at export)")
    assert manifest["versions"] == versions()
    training = manifest["training"]
    # what a device's training loop feeds and gets: the manifest is its only description
    assert training["inputs"] == {"input": "float32 [batch, C, H, W]", "labels": "int64 [batch]",
                                  "sample_weight": "float32 [batch]"}
    assert training["loss"] == ("mean over the batch of sample_weight * cross_entropy(logits, labels); ones for "
                                "sample_weight give the plain mean")
    assert training["optimizer"] == exporter.resolve_optimizer("sgd", None) and training["bn_mode"] == "eval"
    assert training["bn_note"] == exporter.BN_NOTES["eval"] and training["ort_format"] is False
    assert training["outputs"] == ["loss", "logits"]
    assert manifest["export_wall_s"] > 0 and manifest["created_utc"].endswith("Z")
    assert sorted(p.name for p in art.iterdir()) == [".edge-sel-output", "bias", "classifier", "conditions",
                                                     "conditions.json", "manifest.json", "model.onnx"]


def check_each_scheme_states_what_trains_and_its_files(ckpt, art, manifest):
    model, _ = load_checkpoint(ckpt)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    initializers = len(onnx.load(str(art / "classifier" / "training_model.onnx")).graph.initializer)
    for scheme in ("classifier", "bias"):
        s, trainable = manifest["schemes"][scheme], trainable_names(model, scheme)
        assert s["dir"] == scheme and s["note"] == SCHEME_NOTES[scheme] and s["trainable"] == trainable
        assert s["trainable_tensors"] == len(trainable) and s["trainable_entries"] == sum(numel[n] for n in trainable)
        assert s["parameter_entries"] == sum(numel.values()) and s["required_files"] == list(artifacts.FILES)
        assert s["files"] == {name: sha256_file(art / scheme / name) for name in sorted(artifacts.FILES)}
        assert 0 < s["frozen_tensors"] and s["frozen_tensors"] + len(trainable) >= len(numel)
        assert s["backward"] == {**artifacts.backward_stats(art / scheme), "eval_batchnorm_nodes_repaired": 0}
    # BatchNorm frozen: the running statistics are constants the forward graph names too.
    assert manifest["schemes"]["bias"]["frozen_tensors"] > manifest["schemes"]["classifier"]["trainable_tensors"]
    assert initializers > 0


def check_the_backward_counts_are_the_graphs(ckpt, art, manifest):
    train = onnx.load(str(art / "bias" / "training_model.onnx")).graph
    stats = manifest["schemes"]["bias"]["backward"]
    backward = [n for n in train.node if "_Grad/" in n.name]
    assert stats["training_nodes"] == len(train.node) and stats["grad_nodes"] == len(backward) > 0
    assert stats["eval_nodes"] == len(onnx.load(str(art / "bias" / "eval_model.onnx")).graph.node)
    assert stats["grad_op_nodes"] == sum(n.op_type.endswith("Grad") for n in train.node) > 0
    conv = [n for n in train.node if n.op_type == "ConvGrad"]
    assert stats["conv_grad_nodes"] == len(conv) > 0
    # bias trains no convolution weight: no ConvGrad computes dW; the classifier's set has no ConvGrad at all
    assert stats["conv_weight_grad_nodes"] == 0 == manifest["schemes"]["classifier"]["backward"]["conv_grad_nodes"]
    assert stats["gradient_accumulators"] == len(manifest["schemes"]["bias"]["trainable"])
    assert sum(stats["grad_ops"].values()) == len(backward) and list(stats["grad_ops"]) == sorted(stats["grad_ops"])
    full_like = {"training_nodes": 0, "eval_nodes": 0}
    assert set(full_like) < set(stats)


def check_each_condition_is_a_graph_with_its_statistics_and_the_chooser(ckpt, art, manifest):
    from edge_sel.core.bn_bank import read_bank
    model, card = load_checkpoint(ckpt)
    saved = read_bank(ckpt, SHAPE, model)
    bank = manifest["conditions"]
    assert bank["file"] == "conditions.json" and bank["names"] == ["source", "fog"]
    assert bank["graphs"] == ["conditions/0.onnx", "conditions/1.onnx"] and 0 <= bank["max_abs_diff_vs_torch"] <= 1e-4
    text = (art / "conditions.json").read_text()
    written = json.loads(text)
    assert text == json.dumps(written, indent=1) + "\n"
    assert written["files"] == bank["graphs"] and written["chooser"]["names"] == ["source", "fog"]
    assert bank["note"] == "one inference graph per condition; edge-sel predict --backend ort chooses per image"
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(3))
    outs = []
    for c, graph in zip(saved, bank["graphs"]):
        with torch.no_grad():
            for name, m in model.named_modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(c.stats[name][0])
                    m.running_var.copy_(c.stats[name][1])
            expected = model.eval()(x).numpy()
        got = ort.InferenceSession(str(art / graph), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        outs.append(got)
    assert np.abs(outs[0] - outs[1]).max() > 0.1                   # each graph its own statistics


def test_a_planned_scheme_trains_what_the_runs_memory_plan_chose(ckpt, tmp_path, monkeypatch):
    """Also the manifest's clock: created_utc is the UTC time, export_wall_s the export's own
    perf_counter interval in seconds to the millisecond (mutated: round(3), no digits, 4 digits, + t0)."""
    import shutil
    import time
    import types
    run = shutil.copytree(ckpt, tmp_path / "run")
    (run / "config.json").write_text(json.dumps({"memory_plan": {"trainable": ["fc.bias", "features.0.1.weight"]}}))
    clock = iter([100.0, 101.23456])
    monkeypatch.setattr(exporter, "time", types.SimpleNamespace(
        perf_counter=lambda: next(clock), strftime=time.strftime,
        gmtime=lambda *a: time.struct_time((2026, 11, 23, 2, 30, 5, 0, 327, 0))))
    manifest = exporter.export_artifacts(run, tmp_path / "art", ["planned"])
    planned = manifest["schemes"]["planned"]
    assert planned["trainable"] == ["features.0.1.weight", "fc.bias"] and planned["note"] == SCHEME_NOTES["planned"]
    assert manifest["created_utc"] == "2026-11-23T02:30:05Z"
    assert manifest["export_wall_s"] == 1.235 and type(manifest["export_wall_s"]) is float


def test_a_bank_that_does_not_fit_the_models_layers_is_refused_and_nothing_is_left(ckpt, tmp_path):
    import shutil
    from edge_sel.core.bn_bank import read_bank
    other = shutil.copytree(ckpt, tmp_path / "other")
    saved = read_bank(other, SHAPE)
    for c in saved:
        c.stats = {f"renamed.{k}": v for k, v in c.stats.items()}
    write_bank(other / BANK_FILE, saved)
    with pytest.raises(InputError, match="BatchNorm"):
        exporter.export_artifacts(other, tmp_path / "art", ["classifier"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_a_checkpoint_without_a_bank_exports_no_conditions(tmp_path):
    """Also a scheme named twice to the Python API (the command drops repeats): one set, made again
    into its own directory (mutated: that directory's mkdir without exist_ok)."""
    plain = tiny_checkpoint(tmp_path / "plain", bank=False)
    manifest = exporter.export_artifacts(plain, tmp_path / "art", ["classifier", "classifier"])
    assert list(manifest["schemes"]) == ["classifier"]
    assert manifest["schemes"]["classifier"]["files"] == {
        name: sha256_file(tmp_path / "art" / "classifier" / name) for name in sorted(artifacts.FILES)}
    assert "conditions" not in manifest and not (tmp_path / "art" / "conditions").exists()
    assert not (tmp_path / "art" / "conditions.json").exists()


def check_the_inference_model_is_the_checkpoints_with_its_own_statistics(ckpt, art, manifest):
    model, _ = load_checkpoint(ckpt)
    session = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 6):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], model.eval()(x).numpy(), atol=1e-4)
    assert onnx.load(str(art / "model.onnx")).opset_import[0].version == 17


def check_the_training_graphs_weigh_each_sample_and_name_their_outputs(ckpt, art, manifest):
    """loss = mean(w * CE): ORT's training step with two weights against torch on the same batch."""
    from onnxruntime.training import api
    model, _ = load_checkpoint(ckpt)
    for name in artifacts.FILES[:2]:
        graph = onnx.load(str(art / "classifier" / name)).graph
        assert [o.name for o in graph.output][:2] == ["loss", "logits"]
        assert [i.name for i in graph.input][:3] == ["input", "labels", "sample_weight"]
        assert [d.dim_param for d in graph.input[2].type.tensor_type.shape.dim] == ["batch"]
    state = api.CheckpointState.load_checkpoint(str(art / "classifier" / "checkpoint"))
    module = api.Module(str(art / "classifier" / "training_model.onnx"), state,
                        str(art / "classifier" / "eval_model.onnx"))
    module.eval()
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 3, 5, 9])
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5])
    loss, logits = module(x.numpy(), labels.numpy(), weights.numpy())
    with torch.no_grad():
        torch_logits = model.eval()(x)
        expected = (weights * nn.functional.cross_entropy(torch_logits, labels, reduction="none")).mean()
    np.testing.assert_allclose(logits, torch_logits.numpy(), atol=1e-4)
    assert np.asarray(loss).size == 1 and np.asarray(loss).item() == pytest.approx(float(expected), abs=1e-5)


def check_train_mode_batchnorm_adamw_and_ort_files(ckpt, art, manifest):
    s = manifest["schemes"]["classifier"]
    evaluation = onnx.load(str(art / "classifier" / "eval_model.onnx")).graph
    bn = [n for n in evaluation.node if n.op_type == "BatchNormalization"]
    assert s["backward"]["eval_batchnorm_nodes_repaired"] == len(bn) > 0
    assert all(len(n.output) == 1 and all(a.i == 0 for a in n.attribute if a.name == "training_mode") for n in bn)
    from onnxruntime.training import api           # the repaired eval model loads and evaluates
    state = api.CheckpointState.load_checkpoint(str(art / "classifier" / "checkpoint"))
    module = api.Module(str(art / "classifier" / "training_model.onnx"), state,
                        str(art / "classifier" / "eval_model.onnx"))
    module.eval()
    x = np.random.default_rng(0).standard_normal((4, *SHAPE)).astype(np.float32)
    _, logits = module(x, np.zeros(4, np.int64), np.ones(4, np.float32))
    assert logits.shape == (4, 10)
    assert manifest["training"]["bn_mode"] == "train" and manifest["training"]["bn_note"] == exporter.BN_NOTES["train"]
    assert manifest["training"]["ort_format"] is True
    assert {f"{Path(f).stem}.ort" for f in artifacts.FILES[:3]} <= set(os.listdir(art / "classifier"))
    (opt,) = [n for n in onnx.load(str(art / "classifier" / "optimizer_model.onnx")).graph.node
              if n.op_type == "AdamWOptimizer"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in opt.attribute}
    assert "adamw.updated_flag" in opt.output[0] and "loss" not in opt.output
    assert attrs == pytest.approx({"alpha": 0.9, "beta": 0.999, "epsilon": 1e-8, "weight_decay": 0.01,
                                   "correct_bias": 1, "adam_mode": 0})
    assert manifest["training"]["optimizer"] == exporter.resolve_optimizer("adamw", 0.01)


def check_sgd_is_ort_own_optimizer(ckpt, art, manifest):
    from onnxruntime.training import artifacts as ort_artifacts
    assert artifacts.optimizer_block("sgd", 0.0) is ort_artifacts.OptimType.SGD
    optimizer = onnx.load(str(art / "bias" / "optimizer_model.onnx")).graph
    assert "SGDOptimizerV2" in {n.op_type for n in optimizer.node} and "AdamWOptimizer" not in {n.op_type for n in optimizer.node}
    assert "update_completed" in optimizer.output[0].name          # only the training and eval graphs' loss is renamed
    # The checkpoint holds every tensor, trainable or frozen, each marked as such.
    from onnxruntime.training import api
    for scheme in ("classifier", "bias"):
        state = api.CheckpointState.load_checkpoint(str(art / scheme / "checkpoint"))
        marked = {name: p.requires_grad for name, p in state.parameters}
        assert sorted(n for n, grad in marked.items() if grad) == sorted(manifest["schemes"][scheme]["trainable"])
        assert sum(not grad for grad in marked.values()) == manifest["schemes"][scheme]["frozen_tensors"]


def test_a_loss_already_named_loss_is_left_and_another_name_is_replaced_everywhere(tmp_path):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["odd::7"]), helper.make_node("Abs", ["odd::7"], ["y"])],
                              "g", [x], [helper.make_tensor_value_info("odd::7", TensorProto.FLOAT, [1]),
                                         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              value_info=[helper.make_tensor_value_info("odd::7", TensorProto.FLOAT, [1])])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert artifacts.name_loss_output(path) == "odd::7"
    g = onnx.load(str(path)).graph
    assert [o.name for o in g.output] == ["loss", "y"] and list(g.node[0].output) == ["loss"]
    assert list(g.node[1].input) == ["loss"] and [v.name for v in g.value_info] == ["loss"]
    before = path.read_bytes()
    os.utime(path, (0, 0))
    assert artifacts.name_loss_output(path) == "loss" and path.read_bytes() == before
    assert path.stat().st_mtime == 0                               # not written again


def test_the_eval_batchnorm_repair_keeps_one_output_and_eval_mode(tmp_path):
    from onnx import TensorProto, helper
    names = ["x", "s", "b", "m", "v"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 1, 1] if n == "x" else [1]) for n in names]
    bn = helper.make_node("BatchNormalization", names, ["y", "rm", "rv"], training_mode=1, epsilon=1e-5)
    single = helper.make_node("BatchNormalization", names, ["z"], epsilon=1e-5)
    two = helper.make_node("BatchNormalization", names, ["w", "rm2"], training_mode=1)
    graph = helper.make_graph([bn, single, two], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "eval.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert artifacts.repair_eval_batchnorm(path) == 2
    nodes = onnx.load(str(path)).graph.node
    assert list(nodes[2].output) == ["w"]
    assert list(nodes[0].output) == ["y"] and {a.name: a.i for a in nodes[0].attribute if a.type == 2} == \
        {"training_mode": 0}
    assert [a.f for a in nodes[0].attribute if a.name == "epsilon"] == [pytest.approx(1e-5)]
    assert list(nodes[1].output) == ["z"]


def test_the_backward_counts_read_each_kind_of_node(tmp_path):
    """On graphs made by hand: a ConvGrad computes dW when its second output is named (two or three
    outputs, the second empty when the weight is frozen)."""
    from onnx import helper
    nodes = [helper.make_node("ConvGrad", ["g", "x", "w"], ["dx", "dw"], name="conv1_Grad/ConvGrad_0"),
             helper.make_node("ConvGrad", ["g", "x", "w"], ["dx2", "", "db"], name="conv2_Grad/ConvGrad_0"),
             helper.make_node("ConvGrad", ["g", "x", "w"], ["dx3"], name="conv3_Grad/ConvGrad_0"),
             helper.make_node("ReluGrad", ["g", "x"], ["dr"], name="relu_Grad/ReluGrad_0"),
             helper.make_node("InPlaceAccumulatorV2", ["a", "dw"], ["acc"], name="acc"),
             helper.make_node("Relu", ["x"], ["r"], name="relu")]
    for name, graph_nodes in (("training_model.onnx", nodes), ("eval_model.onnx", nodes[-1:])):
        onnx.save(helper.make_model(helper.make_graph(graph_nodes, "g", [], [])), str(tmp_path / name))
    assert artifacts.backward_stats(tmp_path) == {
        "training_nodes": 6, "eval_nodes": 1, "grad_nodes": 4, "grad_op_nodes": 4, "conv_grad_nodes": 3,
        "conv_weight_grad_nodes": 1, "gradient_accumulators": 1, "grad_ops": {"ConvGrad": 3, "ReluGrad": 1}}


def test_the_native_stderr_is_silenced_and_restored(capfd):
    with artifacts.native_stderr_silenced():
        os.write(2, b"INFO from C++\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    with pytest.raises(KeyError):
        with artifacts.native_stderr_silenced():
            raise KeyError("raised inside")
    os.write(2, b"still restored\n")
    assert capfd.readouterr().err == "still restored\n"


# ---- torch -> ONNX ------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [True, False])
def test_a_frozen_batchnorm_is_the_eval_batchnorm_and_keeps_its_names(affine):
    torch.manual_seed(5)
    bn = nn.BatchNorm2d(3, affine=affine, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Sequential(bn))
    x = torch.randn(2, 1, 4, 4)
    expected = model.eval()(x)
    names = [n for n, _ in model.named_parameters()]
    onnx_graph.freeze_batchnorm(model)
    assert isinstance(model[1][0], onnx_graph.FrozenBatchNorm) and isinstance(model[0], nn.Conv2d)
    assert [n for n, _ in model.named_parameters()] == names
    assert "1.0.running_mean" in model.state_dict() and model[1][0].eps == 1e-3
    torch.testing.assert_close(model.train()(x), expected, atol=1e-5, rtol=1e-5)      # train mode changes nothing


def test_the_training_forward_keeps_the_checkpoints_statistics_and_takes_only_the_image(ckpt, tmp_path):
    model, _ = load_checkpoint(ckpt)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in ("eval", "train"):
        proto = onnx_graph.export_training_forward(model, SHAPE, tmp_path / f"{mode}.onnx", mode)
        values = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        for name, _ in model.named_parameters():
            np.testing.assert_array_equal(values[name], state[name].numpy())
        for name in (n for n in state if n.endswith("running_mean")):
            np.testing.assert_array_equal(values[name], state[name].numpy())      # a traced forward moved none
        assert [i.name for i in proto.graph.input] == ["input"]
        assert onnx.load(str(tmp_path / f"{mode}.onnx")) == proto
        bn_nodes = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
        assert (len(bn_nodes) > 0) == (mode == "train")       # eval: spelled out as scale and shift
        # train: batch statistics, the running ones as outputs ORT updates
        assert all(len(n.output) == 3 and [a.i for a in n.attribute if a.name == "training_mode"] == [1]
                   for n in bn_nodes)
        assert_batch_axes(proto)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())        # the model is untouched


def assert_batch_axes(proto):
    """The image and the logits have a batch axis named `batch`, the manifest's word for it."""
    (image,), logits = proto.graph.input, proto.graph.output[0]
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", *SHAPE]
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch", 10]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_equal_parameters_stay_tensors_of_their_own(tmp_path, mode):
    """A fresh model's BatchNorm weights are all ones: exported as plain initializers the exporter
    would merge them, and the training artifacts could not name each one."""
    model = build_model("edgecnn", 10, in_channels=1, input_shape=SHAPE)
    proto = onnx_graph.export_training_forward(model, SHAPE, tmp_path / "f.onnx", mode)
    assert {n for n, _ in model.named_parameters()} <= {t.name for t in proto.graph.initializer}


def test_a_parameter_the_graph_lacks_is_refused(tmp_path):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare, self.other = nn.Linear(4, 2), nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x.flatten(1))
    with pytest.raises(onnx_graph.ExportError) as e:
        onnx_graph.export_training_forward(Unused(), [1, 2, 2], tmp_path / "f.onnx", "eval")
    assert str(e.value) == ("exported graph lacks parameters ['spare.weight', 'spare.bias', 'other.weight']; cannot "
                            "build artifacts")


def test_an_inference_graph_that_differs_from_torch_is_refused(ckpt, tmp_path, monkeypatch):
    """The batches ONNX Runtime is given are the manifest's checked_batch_sizes, 8 then 3 (mutated:
    9 or 4), counted as they are fed: the largest difference may lie in the first 8 images either way."""
    model, _ = load_checkpoint(ckpt)
    model.train()
    worst = onnx_graph.export_inference(model, SHAPE, tmp_path / "a.onnx")
    fed = []

    class Counting(ort.InferenceSession):
        def run(self, names, feed, *args, **kwargs):
            fed.append(len(feed["input"]))
            return super().run(names, feed, *args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(ort, "InferenceSession", Counting)
        assert 0 <= worst <= onnx_graph.INFERENCE_TOLERANCE and worst == onnx_graph.export_inference(
            model, SHAPE, tmp_path / "b.onnx", seed=0)
    assert fed == [8, 3]
    assert all(m.training for m in model.modules())           # exported from a copy: the model's mode is its own
    proto = onnx.load(str(tmp_path / "a.onnx"))
    assert_batch_axes(proto)                                  # the image its only input: weights are constants,
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]     # BatchNorm folded into them
    # The figure is the largest difference over a batch of 8, then of 3, drawn from the seed.
    g, diffs = torch.Generator().manual_seed(0), []
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    for batch in (8, 3):
        x = torch.randn(batch, *SHAPE, generator=g)
        with torch.no_grad():
            diffs.append(float(np.abs(session.run(None, {"input": x.numpy()})[0] - model.eval()(x).numpy()).max()))
    model.train()
    assert worst == max(diffs)
    monkeypatch.setattr(onnx_graph, "INFERENCE_TOLERANCE", worst)         # at the tolerance exactly: accepted
    assert onnx_graph.export_inference(model, SHAPE, tmp_path / "d.onnx") == worst
    monkeypatch.setattr(onnx_graph, "INFERENCE_TOLERANCE", -1.0)
    with pytest.raises(onnx_graph.ExportError) as e:
        onnx_graph.export_inference(model, SHAPE, tmp_path / "c.onnx")
    assert str(e.value).startswith(f"{tmp_path / 'c.onnx'}: ONNX logits differ from torch by ")
    assert str(e.value).endswith("(> -1.0)")


# ---- the command ------------------------------------------------------------------------------

def test_the_command_prints_each_scheme_and_the_bias_note(ckpt, tmp_path, capsys):
    code, out, err = run_main_said(["export", "--checkpoint", ckpt, "--out", tmp_path / "art", "--scheme", "bias",
                                    "--optimizer", "adamw", "--weight-decay", "0.02", "--bn-mode", "train"], capsys)
    assert (code, err) == (0, "")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    s = manifest["schemes"]["bias"]
    b = s["backward"]
    assert manifest["training"]["optimizer"]["weight_decay"] == 0.02 and manifest["training"]["bn_mode"] == "train"
    assert out.splitlines() == [
        f"{tmp_path / 'art' / 'model.onnx'}: inference model, max |onnx - torch| = "
        f"{manifest['inference_model']['max_abs_diff_vs_torch']:.2e}",
        "training artifacts (adamw, BatchNorm train mode):",
        f"  {'scheme':<11} {'tensors':>7} {'entries':>10} {'grad nodes':>10} {'ConvGrad(dW)':>12} {'nodes':>6}",
        f"  {'bias':<11} {s['trainable_tensors']:>7} {s['trainable_entries']:>10,} {b['grad_nodes']:>10} "
        f"{b['conv_grad_nodes']:>7} ({b['conv_weight_grad_nodes']}) {b['training_nodes']:>6}",
        "  bias saves gradient and optimizer memory, not much compute: the input gradient still flows through "
        "every layer"]
    code, out, err = run_main_said(["export", "--checkpoint", ckpt, "--out", tmp_path / "art", "--overwrite",
                                    "--scheme", "classifier", "--quiet"], capsys)
    assert (code, out, err) == (0, "", "")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert list(manifest["schemes"]) == ["classifier"] and manifest["training"]["optimizer"]["name"] == "sgd"
    assert manifest["training"]["bn_mode"] == "eval" and manifest["training"]["ort_format"] is False
    code, err = run_main(["export", "--checkpoint", ckpt, "--out", tmp_path / "art"], capsys)
    assert code == 2 and "pass --overwrite" in err


def check_the_print_has_no_bias_note_without_the_bias_scheme(ckpt, art, manifest):
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.print_export(manifest, art)
    out = printed.getvalue()
    assert "training artifacts (adamw, BatchNorm train mode):" in out and "bias saves" not in out
    assert out.count("\n") == 4


def test_pretrain_export_writes_its_own_artifacts_and_replaces_them(ckpt, tmp_path, capsys):
    import shutil
    own = shutil.copytree(ckpt, tmp_path / "own")
    cli.export_after_pretrain(own, quiet=True)
    assert capsys.readouterr().out == ""
    first = json.loads((own / "artifacts" / "manifest.json").read_text())
    assert list(first["schemes"]) == list(exporter.DEFAULT_SCHEMES)
    cli.export_after_pretrain(own, quiet=False)                    # its own earlier output: replaced
    out = capsys.readouterr().out
    assert out.startswith(f"{own / 'artifacts' / 'model.onnx'}: inference model") and "bias saves" in out
    assert sys.modules["edge_sel.export.exporter"] is exporter


def test_without_the_ort_extra_each_way_in_names_its_own_option(ckpt, tmp_path, monkeypatch, capsys):
    import shutil

    from test_export_errors import plain_onnxruntime
    plain_onnxruntime(monkeypatch)
    own = shutil.copytree(ckpt, tmp_path / "own")     # the extra is said after the checkpoint is read
    with pytest.raises(InputError) as e:
        cli.export_after_pretrain(own, quiet=True)
    assert str(e.value).startswith("--export-artifacts: onnxruntime 1.20.1 has no training API")
    assert not (own / "artifacts").exists()
    code, err = run_main(["export", "--checkpoint", ckpt, "--out", tmp_path / "art"], capsys)
    assert code == 2 and err.startswith("edge-sel: error: export: onnxruntime 1.20.1 has no training API")
    assert not (tmp_path / "art").exists()
    # the Python API, named as the command it serves (mutated: another default option)
    with pytest.raises(InputError) as e:
        exporter.export_artifacts(ckpt, tmp_path / "api")
    assert str(e.value).startswith("edge-sel export: onnxruntime 1.20.1 has no training API")
