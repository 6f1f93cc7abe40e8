"""The device's predictor (edge_sel/predict/predictor.py) on a tiny checkpoint written here, not
trained: an EdgeCNN four channels wide on 1 x 8 x 8 images with a bank of three conditions whose
BatchNorm statistics differ. Each prediction is compared with the model run by hand with the chosen
condition's statistics, the chooser's choice with the chooser run alone, and the FLOPs with the
count worked out by hand; the ONNX Runtime path runs with stand-in sessions. Milliseconds each."""

import copy
import json

import numpy as np
import pytest
import torch

from edge_sel.core.bn_bank import BANK_FILE, SavedCondition, write_bank
from edge_sel.core.checkpoint import ModelCard, save_checkpoint
from edge_sel.errors import InputError
from edge_sel.models import EdgeCNN
from edge_sel.models.spec import ModelSpec
from edge_sel.predict import ort_session
from edge_sel.predict import predictor as predictor_mod
from edge_sel.predict.conditions import ConditionChooser, normalised, pixel_features
from edge_sel.predict.predictor import OWN, Predictor, read_card_of_export

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = [1, 8, 8]
MEAN, STD = [0.4], [0.3]
CLASSES = [f"class {i}" for i in range(10)]
WIDTHS = [4, 4, 4, 4]
# conv 3x3 stages at 8x8, 4x4, 2x2, 1x1 (4 output channels, 1 then 4 input) and the 4 -> 10 head,
# two FLOPs per multiply-add
FORWARD_FLOPS = 2 * (4 * 64 * 9 * 1 + 4 * 16 * 9 * 4 + 4 * 4 * 9 * 4 + 4 * 1 * 9 * 4 + 4 * 10)
# one frame's features (36 Laplacian outputs, 64 pixels) and distances to 3 conditions in 3 dimensions
# The 5-point Laplacian (5 FLOPs an interior output), the sums over pixels and Laplacian outputs, 20 FLOPs
# on those sums a channel, and the distances to three conditions.
CHOICE_FLOPS = (5 * 36 + 3 * (64 + 36) + 20) + 3 * (2 * 3 * 3 + 3 * 3)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = EdgeCNN(10, 1, WIDTHS)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def condition_images(kind, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "clean":
        return torch.randint(60, 200, (n, *SHAPE), generator=g, dtype=torch.uint8)
    if kind == "dark":
        return torch.randint(0, 40, (n, *SHAPE), generator=g, dtype=torch.uint8)
    return (torch.randint(0, 2, (n, *SHAPE), generator=g) * 255).to(torch.uint8)     # "noise": salt and pepper


def bank_stats(model, shift):
    return {n: (m.running_mean + shift, m.running_var * (1 + abs(shift)))
            for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_model()
    card = ModelCard("edgecnn", 10, CLASSES, SHAPE, MEAN, STD,
                     model=ModelSpec("edgecnn", {"widths": WIDTHS}).to_json())
    save_checkpoint(tmp_path / "ckpt", model, card)
    return tmp_path / "ckpt"


@pytest.fixture
def banked(checkpoint):
    model = tiny_model()
    conditions = [SavedCondition(name, condition_images(name, seed=i), bank_stats(model, shift), 1, {},
                                 (torch.zeros(4), torch.ones(4)))
                  for i, (name, shift) in enumerate([("clean", 0.0), ("dark", 0.8), ("noise", -0.6)])]
    write_bank(checkpoint / BANK_FILE, conditions)
    return checkpoint


def by_hand(images, stats=None):
    """The model on normalised images with `stats` as its BatchNorm statistics, in eval mode."""
    model = tiny_model()
    if stats is not None:
        for n, m in model.named_modules():
            if n in stats:
                m.running_mean.copy_(stats[n][0])
                m.running_var.copy_(stats[n][1])
    with torch.no_grad():
        return model(normalised(images, MEAN, STD))


def chooser_by_hand(window=1000):
    names = ["clean", "dark", "noise"]
    return ConditionChooser.from_images(names, [condition_images(n, seed=i) for i, n in enumerate(names)], MEAN, STD,
                                        window)


def test_a_backend_other_than_torch_or_ort_and_a_missing_directory_are_refused(tmp_path):
    with pytest.raises(InputError) as e:
        Predictor(tmp_path, backend="tflite")
    assert str(e.value) == "--backend: choose one of torch, ort, got 'tflite'"
    with pytest.raises(InputError) as e:
        Predictor(tmp_path / "gone")
    assert str(e.value) == f"{tmp_path / 'gone'}: no such checkpoint directory"
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="no such checkpoint directory"):
        Predictor(tmp_path / "file")


def test_a_checkpoint_without_a_bank_predicts_with_its_own_statistics(checkpoint):
    p = Predictor(checkpoint)
    assert p.chooser is None and p.num_conditions == 0 and p.described == 0 and p.switch is None
    assert p.backend == "torch" and p.path == checkpoint and p.images_chosen == 0
    images = torch.cat([condition_images("clean", 3), condition_images("dark", 2)])
    out = p.predict(images)
    expect = by_hand(images)
    assert torch.allclose(out.logits, expect, atol=1e-6) and out.logits.dtype == torch.float32
    assert out.classes == expect.argmax(1).tolist() and out.labels == [CLASSES[c] for c in out.classes]
    assert out.conditions == [OWN] * 5 == ["own"] * 5
    assert p.images_chosen == 0
    assert not p.model.training
    p.reset()                      # nothing to forget, and no error


def test_loading_a_checkpoint_runs_no_meta_device_check_and_a_new_model_still_does(checkpoint, monkeypatch):
    """The strict weight load fixes every tensor's shape, so a device's start skips the meta-device
    forward (its first call in a process loads torch's meta kernels: about 1.5 s of every predict);
    a model built from a spec, with nothing loaded into it, is still checked."""
    from edge_sel.models import build_model, load_checkpoint, spec
    checked = []
    monkeypatch.setattr(spec, "check_output", lambda *args: checked.append(args[1:]))
    model, card = load_checkpoint(checkpoint)
    assert checked == [] and card.input_shape == SHAPE
    build_model(ModelSpec("edgecnn", {"widths": WIDTHS}), 10, SHAPE[0], SHAPE)
    assert checked == [("edgecnn", 10, SHAPE)]


def test_one_frame_is_a_step_of_the_stream_with_its_conditions_statistics(banked):
    """Mutants: the bank not read, the chooser's names, window or images, the statistics lent,
    choose_stream for one image, the count of images chosen."""
    p = Predictor(banked, window=5)
    assert p.num_conditions == 3 and p.described == 48 and p.chooser.window == 5
    assert p.chooser.names == ["clean", "dark", "noise"]
    ref = chooser_by_hand(5)
    stats = [bank_stats(tiny_model(), s) for s in (0.0, 0.8, -0.6)]
    frames = torch.cat([condition_images("dark", 3, seed=7), condition_images("noise", 2, seed=8),
                        condition_images("clean", 2, seed=9)])
    seen = []
    for i, frame in enumerate(frames):
        out = p.predict(frame)                      # C x H x W: one frame
        k = int(ref.choose_stream(pixel_features(frame[None], MEAN, STD))[0])
        seen.append(k)
        assert out.conditions == [["clean", "dark", "noise"][k]]
        assert torch.allclose(out.logits, by_hand(frame[None], stats[k]), atol=1e-5)
        assert p.images_chosen == i + 1
    assert seen == [1, 1, 1, 0, 2, 0, 0]
    np.testing.assert_allclose(p.chooser.belief, ref.belief)
    p.reset()
    np.testing.assert_allclose(p.chooser.belief, [1 / 3] * 3)


def test_a_batch_is_a_set_each_image_with_its_own_condition(banked):
    p = Predictor(banked)
    stats = [bank_stats(tiny_model(), s) for s in (0.0, 0.8, -0.6)]
    images = torch.cat([condition_images("noise", 2, seed=3), condition_images("dark", 3, seed=4),
                        condition_images("clean", 1, seed=5)])
    out = p.predict(images)
    choice = chooser_by_hand().choose_batch(pixel_features(images, MEAN, STD)).tolist()
    assert choice == [2, 2, 1, 1, 1, 0]
    assert out.conditions == ["noise", "noise", "dark", "dark", "dark", "clean"]
    expect = torch.cat([by_hand(images[i:i + 1], stats[k]) for i, k in enumerate(choice)])
    assert torch.allclose(out.logits, expect, atol=1e-5)
    assert out.classes == out.logits.argmax(1).tolist()
    assert p.images_chosen == 6
    np.testing.assert_allclose(p.chooser.belief, [1 / 3] * 3)      # a set leaves the stream alone


def test_predicting_leaves_the_models_own_statistics(banked):
    p = Predictor(banked)
    own = {k: v.clone() for k, v in p.model.state_dict().items()}
    p.predict(condition_images("dark", 4, seed=2))
    assert all(torch.equal(own[k], v) for k, v in p.model.state_dict().items())


def test_the_model_and_the_statistics_go_to_the_device_asked_for(banked):
    """Mutants: the device not kept, the model or the bank's statistics left where they were."""
    p = Predictor(banked, device="meta")
    assert p.device == torch.device("meta")
    assert all(t.device.type == "meta" for t in p.model.state_dict().values())
    assert all(t.device.type == "meta" for stats in p.stats for pair in stats.values() for t in pair)
    assert Predictor(banked).device == torch.device("cpu")


def test_a_bank_that_does_not_fit_the_models_batchnorm_layers_is_refused(checkpoint):
    model = tiny_model()
    stats = bank_stats(model, 0.0)
    stats["features.0.1"] = (torch.zeros(5), torch.ones(5))
    write_bank(checkpoint / BANK_FILE, [SavedCondition("clean", condition_images("clean"), stats, 1, {},
                                                       (torch.zeros(4), torch.ones(4)))])
    with pytest.raises(InputError) as e:
        Predictor(checkpoint)
    assert str(e.value) == (f"{checkpoint / BANK_FILE}: its BatchNorm statistics do not fit the model "
                            f"(layer features.0.1: bank 5, model 4 features)")
    assert Predictor(checkpoint, use_bank=False).chooser is None


def test_the_bank_can_be_left_unused(banked):
    p = Predictor(banked, use_bank=False)
    assert p.chooser is None and p.num_conditions == 0 and p.described == 0
    images = condition_images("dark", 2, seed=1)
    out = p.predict(images)
    assert out.conditions == ["own", "own"] and torch.allclose(out.logits, by_hand(images), atol=1e-6)
    assert p.flops_per_image() == {"forward": FORWARD_FLOPS, "choice": 0}


def test_images_of_another_shape_are_refused_naming_both_shapes(banked):
    p = Predictor(banked)
    with pytest.raises(InputError) as e:
        p.predict(torch.zeros(2, 1, 8, 9, dtype=torch.uint8))
    assert str(e.value) == "images of shape [1, 8, 9]: the model takes [1, 8, 8]"
    with pytest.raises(InputError) as e:
        p.predict(torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert str(e.value) == "images of shape [3, 8, 8]: the model takes [1, 8, 8]"
    assert p.images_chosen == 0


def test_the_flops_of_one_image_are_the_forward_pass_and_the_choice(banked, checkpoint):
    """Figures a user reads: the forward pass at batch 1 and the features and distances."""
    assert FORWARD_FLOPS == 10736 and CHOICE_FLOPS == 581
    flops = Predictor(banked).flops_per_image()
    assert flops == {"forward": FORWARD_FLOPS, "choice": CHOICE_FLOPS}
    assert type(flops["forward"]) is int and type(flops["choice"]) is int


def write_export(directory, checkpoint_path, manifest=None, flops=FORWARD_FLOPS):
    directory.mkdir(parents=True, exist_ok=True)
    m = manifest or {"checkpoint": {"architecture": "edgecnn", "num_classes": 10, "path": str(checkpoint_path)},
                     "class_names": CLASSES, "input": {"shape": [1, *SHAPE], "normalization": {"mean": MEAN,
                                                                                                 "std": STD}},
                     "inference_model": {"file": "model.onnx", **({"flops_forward_per_image": flops}
                                                                  if flops is not None else {})}}
    (directory / "manifest.json").write_text(json.dumps(m))
    return directory


def test_an_exports_card_comes_from_its_manifest(tmp_path, checkpoint):
    export = write_export(tmp_path / "export", checkpoint)
    card, flops = read_card_of_export(export)
    assert (card.architecture, card.num_classes, card.class_names, card.input_shape, card.mean, card.std,
            card.dataset, card.training) == ("edgecnn", 10, CLASSES, [1, 8, 8], MEAN, STD, {}, {})
    assert flops == FORWARD_FLOPS
    with pytest.raises(InputError) as e:
        read_card_of_export(tmp_path)
    assert str(e.value) == f"{tmp_path}: not an export directory (no manifest.json); run edge-sel export first"
    for text, error in [("{", "JSONDecodeError"), ('{"input": {}}', "KeyError"), ("[1]", "TypeError"),
                        ('{"checkpoint": {"architecture": "a", "num_classes": "x"}, "class_names": [], '
                         '"input": {"normalization": {}, "shape": [1, 1]}}', "ValueError"),
                        ('{"checkpoint": {"architecture": "a", "num_classes": 2}, "class_names": [], '
                         '"input": {"normalization": {"mean": [], "std": []}, "shape": [1, 1]}, '
                         '"inference_model": []}', "AttributeError")]:
        (export / "manifest.json").write_text(text)
        with pytest.raises(InputError) as e:
            read_card_of_export(export)
        assert str(e.value).startswith(f"{export / 'manifest.json'}: unreadable or corrupt ({error}: ")


@pytest.mark.parametrize("flops", [-1, 1.5, "10736", True, [1], {"n": 1}])
def test_an_exports_forward_flops_that_are_not_a_count_are_refused_in_one_line(tmp_path, checkpoint, flops):
    export = write_export(tmp_path / "export", checkpoint, flops=flops)
    with pytest.raises(InputError) as e:
        read_card_of_export(export)
    assert str(e.value) == (f"{export / 'manifest.json'}: inference_model.flops_forward_per_image is {flops!r}, "
                            f"not a count of FLOPs")


def test_an_exports_flops_come_from_its_manifest_and_the_checkpoint_it_names_is_never_opened(tmp_path, checkpoint):
    """Before: predict --backend ort loaded the torch checkpoint at manifest.json's checkpoint.path
    (any path, a relative one against the working directory) to count FLOPs."""
    assert read_card_of_export(write_export(tmp_path / "e0", checkpoint, flops=0))[1] == 0
    assert read_card_of_export(write_export(tmp_path / "old", checkpoint, flops=None))[1] is None
    for named in (checkpoint, tmp_path / "nothing", "../ckpt", 5, None, ["x"]):
        export = write_export(tmp_path / "export", named, flops=777)
        assert read_card_of_export(export)[1] == 777
    outside = tmp_path / "outside.json"
    outside.write_text((export / "manifest.json").read_text())
    (export / "manifest.json").unlink()
    (export / "manifest.json").symlink_to(outside)
    with pytest.raises(InputError) as e:
        read_card_of_export(export)
    assert str(e.value) == (f"{export}: 'manifest.json' lies outside {export}; edge-sel follows no path out of a "
                            f"directory it received")


class Session:
    """A stand-in ONNX Runtime session: logits are the row's pixel sum times `k` plus the class index."""

    def __init__(self, k, name):
        self.k, self.name, self.calls = k, name, []

    def get_inputs(self):
        return [type("Input", (), {"name": self.name})()]

    def run(self, outputs, feeds):
        assert outputs is None and list(feeds) == [self.name]
        arr = feeds[self.name]
        self.calls.append(len(arr))
        return [(arr.reshape(len(arr), -1).sum(1, keepdims=True) * self.k + np.arange(10)).astype(np.float64)]


def ort_predictor(tmp_path, checkpoint, monkeypatch, chooser=True, window=1000):
    export = write_export(tmp_path / "export", checkpoint)
    sessions = [Session(k + 1, f"input{k}") for k in range(3 if chooser else 1)]
    names = ["clean", "dark", "noise"] if chooser else ["own"]
    seen = []

    def load_sessions(directory, use_bank, threads):
        seen.append((directory, use_bank, threads))
        return names, sessions, chooser_by_hand().to_dict() if chooser else None
    monkeypatch.setattr(ort_session, "load_sessions", load_sessions)
    p = Predictor(export, backend="ort", window=window, use_bank=True, threads=2)
    assert seen == [(export, True, 2)]
    return p, sessions


def test_the_ort_backend_routes_each_condition_to_its_graph(tmp_path, checkpoint, monkeypatch):
    """Mutants: one run for a frame or a batch of one condition, else one run per condition with its
    rows only; the session's own input name; the logits as float32."""
    p, sessions = ort_predictor(tmp_path, checkpoint, monkeypatch, window=7)
    assert p.chooser.window == 7 and p.condition_names == ["clean", "dark", "noise"] and p.described == 0
    assert p.num_conditions == 3 and p._input_names == ["input0", "input1", "input2"]
    images = torch.cat([condition_images("noise", 2, seed=3), condition_images("dark", 3, seed=4),
                        condition_images("clean", 1, seed=5)])
    out = p.predict(images)
    assert out.conditions == ["noise", "noise", "dark", "dark", "dark", "clean"]
    x = normalised(images, MEAN, STD).reshape(6, -1).sum(1, keepdim=True).double()
    k = torch.tensor([3, 3, 2, 2, 2, 1], dtype=torch.float64)[:, None]
    assert out.logits.dtype == torch.float32
    assert torch.allclose(out.logits, (x * k + torch.arange(10)).float(), atol=1e-4)
    assert [s.calls for s in sessions] == [[1], [3], [2]]
    same = p.predict(condition_images("dark", 3, seed=7))
    assert same.conditions == ["dark"] * 3 and [s.calls for s in sessions] == [[1], [3, 3], [2]]
    pair = torch.cat([condition_images("noise", 1, seed=3), condition_images("dark", 1, seed=4)])
    both = p.predict(pair)                # two images, two conditions: two runs, not one
    assert both.conditions == ["noise", "dark"] and [s.calls for s in sessions] == [[1], [3, 3, 1], [2, 1]]
    x2 = normalised(pair, MEAN, STD).reshape(2, -1).sum(1, keepdim=True).double()
    assert torch.allclose(both.logits, (x2 * torch.tensor([[3.0], [2.0]], dtype=torch.float64)
                                        + torch.arange(10)).float(), atol=1e-4)
    frame = p.predict(condition_images("noise", 1, seed=1)[0])
    assert frame.conditions == ["noise"] and sessions[2].calls == [2, 1, 1]
    assert frame.logits.dtype == torch.float32 and frame.logits.shape == (1, 10)


def test_the_ort_backend_without_a_bank_runs_the_plain_graph(tmp_path, checkpoint, monkeypatch):
    p, sessions = ort_predictor(tmp_path, checkpoint, monkeypatch, chooser=False)
    assert p.chooser is None and p.num_conditions == 0
    out = p.predict(condition_images("dark", 2, seed=1))
    assert out.conditions == ["own", "own"] and sessions[0].calls == [2]
    assert p.flops_per_image() == {"forward": FORWARD_FLOPS, "choice": 0}


def test_the_ort_backend_counts_flops_from_the_exports_manifest_or_says_it_cannot(tmp_path, checkpoint,
                                                                                    monkeypatch):
    p, _ = ort_predictor(tmp_path, checkpoint, monkeypatch)
    assert p.flops_per_image() == {"forward": FORWARD_FLOPS, "choice": CHOICE_FLOPS}
    p.export_flops = None                   # an export made before they were recorded
    assert p.flops_per_image() == {"forward": None, "choice": CHOICE_FLOPS}


def test_a_model_without_floating_tensors_computes_in_the_default_dtype():
    """Lent statistics are cast to the model's floating dtype; a model that has none (a counter as
    its only buffer) takes torch's default, not None (no cast) nor an error."""
    from edge_sel.predict.statistics import floating_dtype
    counter = torch.nn.Module()
    counter.register_buffer("seen", torch.zeros(1, dtype=torch.long))
    assert floating_dtype(counter) == torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert floating_dtype(counter) == torch.float64
    finally:
        torch.set_default_dtype(default)
    counter.register_buffer("scale", torch.ones(1, dtype=torch.float16))
    assert floating_dtype(counter) == torch.float16


def test_a_mixed_batch_on_another_device_than_its_choice_is_put_together_there():
    """The choice is made on the CPU (the decoded frames) while the model may sit on another
    device: each condition's rows are moved to the images' device before they index them. The
    meta device stands in for an accelerator this machine lacks."""
    from edge_sel.predict.statistics import StatisticsSwitch
    layer = torch.nn.BatchNorm2d(2).to("meta")
    switch = StatisticsSwitch(torch.nn.Sequential(layer))
    stats = [{"0": (torch.zeros(2, device="meta"), torch.ones(2, device="meta"))} for _ in range(2)]
    x = torch.zeros(4, 2, 1, 1, device="meta")
    out = switch.forward(lambda xs: xs * 2, x, torch.tensor([0, 1, 1, 0]), stats)
    assert out.device.type == "meta" and out.shape == (4, 2, 1, 1)
