"""What a device is handed, refused in one line where it is at fault and never taken for something
else: a device torch cannot use, images in forms a user calls the Python API with (numpy arrays,
PIL images, files, floats that need a scale), damaged files a device receives (a PNG with a broken
chunk, an export's conditions.json or manifest.json, a run's summary.json), prediction lines
written whole on a full disk, the bank's statistics cast to the model's floating dtype, and a
predictor shared between threads. The tiny checkpoint of test_predictor_device.py (1 x 8 x 8
images, three conditions); milliseconds each but the export (a second or two, once)."""

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import needs_ort, run_cli, run_main
from test_predictor_device import CLASSES, MEAN, STD, banked, by_hand, checkpoint, condition_images, tiny_model  # noqa: F401
from edge_sel.errors import InputError, WriteError
from edge_sel.predict.conditions import image_features, normalised
from edge_sel.predict.predictor import Predictor
from edge_sel.predict.run import LineSink

pytestmark = pytest.mark.usefixtures("one_thread")


def png_bytes(pixels: np.ndarray, split: bool = False) -> bytes:
    """A grayscale PNG; with `split`, its image data in two IDAT chunks."""
    b = io.BytesIO()
    Image.fromarray(pixels).save(b, "PNG")
    g = b.getvalue()
    if not split:
        return g
    i = g.index(b"IDAT")
    n = int.from_bytes(g[i - 4:i], "big")
    data = g[i + 4:i + 4 + n]

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return g[:i - 4] + chunk(b"IDAT", data[:n // 2]) + chunk(b"IDAT", data[n // 2:]) + g[i + 4 + n + 4:]


def broken_chunk_png() -> bytes:
    """A PNG whose second image-data chunk has a type no PNG has: Pillow raises SyntaxError (not an
    OSError) while decoding it."""
    d = bytearray(png_bytes(condition_images("clean", 1)[0, 0].numpy(), split=True))
    j = d.index(b"IDAT", d.index(b"IDAT") + 1)
    d[j:j + 4] = b"ID\x00T"
    return bytes(d)


def tree(*roots) -> dict:
    """Every file under `roots` by path, with its bytes: inputs must be byte-identical afterwards."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({p: p.read_bytes() for p in paths})
    return out


def one_line(code, err, says):
    assert code == 2 and err.count("\n") == 1 and err.startswith("edge-sel: error: "), err
    assert says in err, err


# ---- item: a device torch cannot use -----------------------------------------------------------

def test_a_device_torch_cannot_use_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    for device in ["bogus", "cuda:99" if torch.cuda.is_available() else "cuda"]:
        with pytest.raises(InputError) as e:
            Predictor(checkpoint, device=device)
        assert str(e.value).startswith(f"--device {device}: torch cannot use it on this machine (")
        assert "\n" not in str(e.value)
    with pytest.raises(InputError) as e:
        Predictor(checkpoint, backend="ort", device="cuda")
    assert str(e.value) == "--device cuda: --backend ort runs on the CPU (leave --device out)"
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(condition_images("clean", 1)[0, 0].numpy()))
    for device in ("bogus", "cuda:99"):
        code, err = run_main(["predict", "--checkpoint", checkpoint, "--device", device, image, "--quiet"], capsys)
        one_line(code, err, f"--device {device}: torch cannot use it on this machine")
    assert Predictor(checkpoint, device="cpu").device == torch.device("cpu")


@pytest.mark.parametrize("option, value, said", [("threads", 0, "--threads must be > 0, got 0"),
                                                 ("threads", -1, "--threads must be > 0, got -1"),
                                                 ("threads", 1.5, "--threads must be > 0, got 1.5"),
                                                 ("window", 1, "--window must be > 1, got 1")])
def test_the_apis_counts_are_checked_as_the_command_lines(checkpoint, option, value, said):
    with pytest.raises(InputError) as e:
        Predictor(checkpoint, **{option: value})
    assert str(e.value) == said


# ---- item: images in every form the Python API is called with ----------------------------------

def test_pixels_as_tensors_arrays_pil_images_and_files_predict_alike(banked, tmp_path):
    images = torch.cat([condition_images("dark", 2, seed=4), condition_images("clean", 1, seed=5)])
    expect = Predictor(banked).predict(images)
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png_bytes(im[0].numpy()))
    for given in (images.numpy(), [im for im in images], [im.numpy() for im in images], files,
                  [str(f) for f in files], [Image.open(f) for f in files], images.long()):
        out = Predictor(banked).predict(given)
        assert out.classes == expect.classes and out.conditions == expect.conditions, type(given)
        assert torch.allclose(out.logits, expect.logits, atol=1e-6)
    frame = Predictor(banked).predict(files[0])            # one file is a frame: C x H x W from it
    assert frame.conditions == Predictor(banked).predict(images[0]).conditions and len(frame.classes) == 1
    assert len(Predictor(banked).predict(tmp_path).classes) == 3        # a directory: its images in name order


def test_float_images_need_a_scale_and_with_it_predict_as_their_pixels(banked):
    images = torch.cat([condition_images("dark", 2, seed=4), condition_images("noise", 2, seed=6)])
    expect = Predictor(banked).predict(images)
    p = Predictor(banked)
    for floats in (images.float() / 255, images.double().numpy() / 255):
        with pytest.raises(InputError) as e:
            p.predict(floats)
        assert str(e.value) == (f"images of dtype {'float32' if isinstance(floats, torch.Tensor) else 'float64'}: "
                                f"pixels are uint8 (0-255); for floats in 0-1 pass scale=255 (pixels = images x scale)")
        out = Predictor(banked).predict(floats, scale=255)
        assert out.conditions == expect.conditions and out.classes == expect.classes
        assert torch.allclose(out.logits, expect.logits, atol=1e-4)
    assert p.images_chosen == 0                                          # nothing refused was counted
    assert Predictor(banked).predict(images.float(), scale=1).conditions == expect.conditions
    for bad in (0, -255, float("nan"), float("inf"), True, "255"):
        with pytest.raises(InputError, match=r"^scale=.*: give the positive factor that makes pixels of 0-255"):
            p.predict(images.float() / 255, scale=bad)
    with pytest.raises(InputError) as e:
        p.predict(images.float(), scale=255)                  # pixels taken for 0-1 values
    assert str(e.value) == "images of dtype float32 span 0 to 65025 after scale=255: pixels are 0-255"
    with pytest.raises(InputError) as e:
        p.predict(images.long() * 2)
    assert str(e.value) == "images of dtype int64 span 0 to 510: pixels are 0-255; pass scale= to map them"
    with pytest.raises(InputError, match="^images of dtype bool: pixels are uint8"):
        p.predict(images > 100)


@pytest.mark.parametrize("given, said", [
    (torch.zeros(0, 1, 8, 8, dtype=torch.uint8), "an empty batch (shape [0, 1, 8, 8]): give at least one image"),
    ([], "an empty batch: give at least one image"),
    (torch.zeros(1, 1, 1, 8, 8, dtype=torch.uint8), "images of shape [1, 1, 1, 8, 8]: give one image (C x H x W) "
                                                     "or a batch (N x C x H x W) of C x H x W = [1, 8, 8]"),
    (np.zeros((8, 8), dtype=np.uint8), "images of shape [8, 8]: give one image (C x H x W) or a batch "
                                       "(N x C x H x W) of C x H x W = [1, 8, 8]"),
    (np.zeros((8, 8, 1), dtype=np.uint8), "images of shape [8, 8, 1]: the model takes [1, 8, 8]"),
    ([torch.zeros(1, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 9, dtype=torch.uint8)], "images of different shapes"),
    ({"pixels": 1}, "images of type dict: give a tensor, a numpy array, a PIL image or an image file"),
    ([[0.5, "x"]], "images of type list: give a tensor"),
])
def test_images_of_no_usable_shape_are_refused_naming_the_shape_given(banked, given, said):
    p = Predictor(banked)
    with pytest.raises(InputError) as e:
        p.predict(given)
    assert str(e.value).startswith(said)
    assert p.images_chosen == 0


def test_a_pil_image_of_another_size_or_a_missing_file_is_refused(banked, tmp_path):
    p = Predictor(banked)
    with pytest.raises(InputError) as e:
        p.predict(Image.new("L", (9, 8)))
    assert str(e.value) == "PIL image 9x8: image is 9x8, the model takes 8x8 (--resize to scale it)"
    with pytest.raises(InputError) as e:
        p.predict(tmp_path / "none.png")
    assert str(e.value) == f"{tmp_path / 'none.png'}: no such file or directory"


def test_threads_sharing_a_predictor_keep_one_stream(banked):
    """The chooser's belief and the count move under one lock: no two threads are ever inside the
    stream's step at once (each step sleeps a millisecond inside, so that without the lock they
    were), and identical frames from four threads end where one thread's do."""
    frame = condition_images("dark", 1, seed=3)[0]
    alone = Predictor(banked)
    for _ in range(24):
        alone.predict(frame)
    shared = Predictor(banked)
    step, inside, most = shared.chooser.choose_stream, [0], [0]

    def slow_step(features):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.001)
        try:
            return step(features)
        finally:
            inside[0] -= 1
    shared.chooser.choose_stream = slow_step
    workers = [threading.Thread(target=lambda: [shared.predict(frame) for _ in range(6)]) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert most == [1] and shared.images_chosen == 24
    np.testing.assert_allclose(shared.chooser.belief, alone.chooser.belief)


# ---- item: the engine's bank on a model whose first buffer is an integer -----------------------

def test_the_bank_lends_statistics_in_the_models_floating_dtype_whatever_its_first_buffer(banked):
    from edge_sel.core.bn_bank import read_bank
    from edge_sel.engine.evaluation.bn_bank import ConditionBank, Condition
    model = tiny_model().double()
    model.register_buffer("frames_seen", torch.zeros(1, dtype=torch.long))      # the top module's: first
    assert next(iter(model.buffers())).dtype == torch.long
    saved = read_bank(banked, [1, 8, 8], tiny_model())
    bank = ConditionBank([Condition(c.name, c.images, c.stats) for c in saved], MEAN, STD, 0.5, {})
    attached = bank.attach(model)
    images = condition_images("dark", 3, seed=2)
    x = normalised(images, MEAN, STD).double()
    with torch.no_grad():
        logits = model(x)
    assert logits.dtype == torch.float64
    k = bank.chooser().choose_batch(image_features(x)).tolist()
    expect = torch.cat([by_hand(images[i:i + 1], saved[c].stats) for i, c in enumerate(k)]).double()
    assert torch.allclose(logits, expect, atol=1e-4)
    attached.remove()


# ---- item: prediction lines written whole ------------------------------------------------------

def test_a_short_write_is_written_on_and_a_failed_one_cut_back_to_the_last_whole_line(tmp_path, monkeypatch):
    out = tmp_path / "preds.jsonl"
    sink = LineSink(out)
    real = os.write
    sizes = []

    def short(fd, data):                         # the system takes at most 5 bytes a call
        sizes.append(len(data))
        return real(fd, bytes(data[:5]))
    monkeypatch.setattr(os, "write", short)
    sink.write('{"a": 1}\n{"b": 2}\n')
    assert out.read_text() == '{"a": 1}\n{"b": 2}\n' and sizes == [18, 13, 8, 3]
    calls = []

    def full(fd, data):                          # 7 bytes fit, then the disk is full
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[:7]))
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WriteError) as e:
        sink.write('{"c": 3}\n')
    assert str(e.value) == (f"--out {out}: cannot write (No space left on device); it keeps the whole lines "
                            f"written before (18 bytes)")
    assert out.read_text() == '{"a": 1}\n{"b": 2}\n'
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    with pytest.raises(WriteError) as e:
        sink.write("x\n")
    assert str(e.value).startswith(f"--out {out}: cannot write (the system wrote nothing); ")
    sink.close()
    assert out.read_text() == '{"a": 1}\n{"b": 2}\n'


def test_a_file_size_limit_leaves_whole_lines_and_one_line_of_error(banked, tmp_path):
    """RLIMIT_FSIZE in a real `edge-sel predict`: the lines that fit are kept whole, the rest is
    said in one line (exit 1), no traceback."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        (images / f"{i:03d}.png").write_bytes(png_bytes(condition_images("clean", 1, seed=i)[0, 0].numpy()))
    out = tmp_path / "preds.jsonl"
    limit = 1000
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d)); sys.argv = sys.argv[1:]; "
            "from edge_sel.cli import main; main()" % (limit, limit))
    proc = subprocess.run([sys.executable, "-c", code, "edge-sel", "predict", "--checkpoint", banked, images, "--out",
                           out, "--quiet", "--batch-size", "4", "--threads", "1"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"edge-sel: error: --out {out}: cannot write ("), \
        proc.stderr
    text = out.read_text()
    assert 0 < len(text) <= limit and text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) % 4 == 0 and [line["path"] for line in lines] == [str(images / f"{i:03d}.png")
                                                                          for i in range(len(lines))]


# ---- received files that are damaged: refused in one line, left as they were -----------------

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An ORT export of the tiny banked checkpoint (the classifier's training artifacts only)."""
    import test_predictor_device as tiny
    from edge_sel.core.bn_bank import BANK_FILE, SavedCondition, write_bank
    from edge_sel.core.checkpoint import ModelCard, save_checkpoint
    from edge_sel.models.spec import ModelSpec
    root = tmp_path_factory.mktemp("export")
    model = tiny_model()
    save_checkpoint(root / "ckpt", model, ModelCard("edgecnn", 10, CLASSES, tiny.SHAPE, MEAN, STD,
                                                    model=ModelSpec("edgecnn", {"widths": tiny.WIDTHS}).to_json()))
    write_bank(root / "ckpt" / BANK_FILE, [
        SavedCondition(name, condition_images(name, seed=i), tiny.bank_stats(model, shift), 1, {},
                       (torch.zeros(4), torch.ones(4)))
        for i, (name, shift) in enumerate([("clean", 0.0), ("dark", 0.8), ("noise", -0.6)])])
    run_cli("export", "--checkpoint", root / "ckpt", "--out", root / "export", "--scheme", "classifier", "--quiet")
    return root / "export"


def edit_json(path, change):
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def set_in(keys, value):
    def change(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


def shorter_means(d):
    for m in d["chooser"]["models"]:
        m["mean"], m["precision"] = m["mean"][:2], [row[:2] for row in m["precision"][:2]]


CRAFTED_EXPORTS = {
    "files-not-strings": ("conditions.json", set_in(["files"], [1, 2, 3]), "one graph file name per condition"),
    "fewer-models-than-names": ("conditions.json", lambda d: d["chooser"]["models"].pop(),
                                "a chooser needs one model per condition"),
    "a-short-mean": ("conditions.json", lambda d: d["chooser"]["models"][1].update(mean=[0.0, 0.0]),
                     "mean and precision disagree in size"),
    "means-of-another-size": ("conditions.json", shorter_means, "a Gaussian over 3 features per condition"),
    "names-not-strings": ("conditions.json", set_in(["chooser", "names"], [1, 2, 3]), "one name and a Gaussian"),
    "too-few-class-names": ("manifest.json", set_in(["class_names"], CLASSES[:9]),
                            "class_names one name per class"),
    "a-std-of-zero": ("manifest.json", set_in(["input", "normalization", "std"], [0.0]),
                      "a finite mean and a positive std per channel"),
}


@needs_ort
@pytest.mark.parametrize("name", sorted(CRAFTED_EXPORTS))
def test_a_damaged_export_is_refused_in_one_line_and_left_as_it_was(export, tmp_path, capsys, name):
    import shutil
    file, change, says = CRAFTED_EXPORTS[name]
    crafted = tmp_path / "export"
    shutil.copytree(export, crafted)
    edit_json(crafted / file, change)
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(condition_images("clean", 1)[0, 0].numpy()))
    before = tree(crafted, image)
    code, err = run_main(["predict", "--checkpoint", crafted, "--backend", "ort", image, "--quiet",
                          "--out", tmp_path / "preds.jsonl"], capsys)
    one_line(code, err, f"{crafted / file}: unreadable or corrupt (")
    assert says in err
    assert tree(crafted, image) == before


@needs_ort
def test_the_export_as_written_predicts_as_its_checkpoint(export, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    frames = torch.cat([condition_images("dark", 3, seed=8), condition_images("noise", 3, seed=9)])
    for i, frame in enumerate(frames):
        (images / f"{i}.png").write_bytes(png_bytes(frame[0].numpy()))
    code, err = run_main(["predict", "--checkpoint", export, "--backend", "ort", images, "--quiet", "--out",
                          tmp_path / "preds.jsonl"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    torch_side = Predictor(export.parent / "ckpt")
    expect = [torch_side.predict(frame) for frame in frames]
    assert [line["condition"] for line in lines] == [e.conditions[0] for e in expect]
    assert [line["class"] for line in lines] == [e.classes[0] for e in expect]
    assert {line["condition"] for line in lines} == {"dark", "noise"}


def test_a_png_with_a_broken_chunk_is_refused_naming_it(banked, tmp_path, capsys):
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    good.write_bytes(png_bytes(condition_images("clean", 1)[0, 0].numpy()))
    bad.write_bytes(broken_chunk_png())
    with pytest.raises(SyntaxError):
        Image.open(bad).convert("L")                  # what Pillow raises for it
    before = tree(tmp_path, banked)
    code, err = run_main(["predict", "--checkpoint", banked, good, bad, "--quiet", "--out", tmp_path / "p.jsonl"],
                         capsys)
    one_line(code, err, f"{bad}: not a readable image (SyntaxError)")
    assert tree(tmp_path, banked) == before
    with pytest.raises(InputError, match="not a readable image"):
        Predictor(banked).predict(bad)


def test_a_checkpoint_card_with_a_std_of_zero_is_refused(banked, tmp_path, capsys):
    crafted = banked
    edit_json(crafted / "model.json", set_in(["normalization", "std"], [0]))
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(condition_images("clean", 1)[0, 0].numpy()))
    before = tree(crafted, image)
    code, err = run_main(["predict", "--checkpoint", crafted, image, "--quiet"], capsys)
    one_line(code, err, f"{crafted / 'model.json'}: not an edge-sel model card (normalization needs a finite mean "
                        f"and a positive std per channel)")
    assert tree(crafted, image) == before


@pytest.mark.parametrize("text", ["[]", '"summary"', "3", "null"])
def test_a_runs_summary_that_is_json_but_no_mapping_is_refused_or_set_aside(tmp_path, text, capsys):
    from edge_sel.engine.night import life
    from edge_sel.engine.night.promote import read_run, run_eval_batch, run_summary
    from edge_sel.engine.runs.out_dir import refuse_finished
    run = tmp_path / "20260101T000000Z"
    (run / "state").mkdir(parents=True)
    (run / "summary.json").write_text(text)
    (run / "config.json").write_text("{}")
    for name in ("model.safetensors", "model.json"):
        (run / name).write_text("")
    before = tree(run)
    assert life.unfinished(run) is True                   # the resume decides, and refuses it:
    with pytest.raises(InputError) as e:
        refuse_finished(run, 1)
    assert str(e.value) == f"--resume {run}: summary.json is not a run's summary (JSON, but not a mapping)"
    with pytest.raises(InputError) as e:
        read_run(run)
    assert str(e.value) == f"RUN {run}: summary.json is not a run's record (JSON, but not a mapping)"
    assert run_eval_batch(run_summary(run)) is None
    code, err = run_main(["promote", run, "--deployed", tmp_path / "deployed"], capsys)
    one_line(code, err, f"RUN {run}: summary.json is not a run's record")
    assert tree(run) == before


@pytest.mark.parametrize("batch", ['"64"', "0", "-8", "true", "2.5"])
def test_a_runs_evaluation_batch_that_is_no_count_is_not_used(tmp_path, batch):
    from edge_sel.engine.night.promote import run_eval_batch, run_summary
    (tmp_path / "summary.json").write_text('{"layout": {"eval_batch_size": %s}}' % batch)
    assert run_eval_batch(run_summary(tmp_path)) is None


# ---- images.py function by function (what test_predict.py covers through trained models) --------

def test_a_directory_lists_its_images_by_relative_path_and_an_empty_one_or_none_is_refused(tmp_path):
    """Mutants: the sort key (a Path orders "a/b.png" before "a-b/x.png", the text the other way),
    the refusals' messages."""
    from edge_sel.predict.images import list_images
    for name in ("a-b/x.png", "a/b.png", "c.PNG", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_images([tmp_path]) == [tmp_path / "a-b/x.png", tmp_path / "a/b.png", tmp_path / "c.PNG"]
    with pytest.raises(InputError) as e:
        list_images([])
    assert str(e.value) == "predict: name at least one image file or directory"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        list_images([tmp_path / "empty"])
    assert str(e.value) == f"{tmp_path / 'empty'}: no image files in this directory"


def test_pixels_are_read_channel_by_channel_and_scaled_only_when_asked(tmp_path):
    """Mutants: the channel order (transpose), the grey conversion, the bilinear resize, the channels
    a file can give, a file of another size resized without --resize."""
    from edge_sel.predict.images import pil_pixels, read_image
    rgb = np.zeros((8, 9, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, np.arange(9, dtype=np.uint8)[None, :] * 20, 7
    path = tmp_path / "wide.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(InputError) as e:
        read_image(path, [3, 8, 8], False)
    assert str(e.value) == f"{path}: image is 9x8, the model takes 8x8 (--resize to scale it)"
    resized = read_image(path, [3, 8, 8], True)
    expect = np.asarray(Image.fromarray(rgb).resize((8, 8), Image.BILINEAR)).transpose(2, 0, 1)
    assert resized.dtype == torch.uint8 and torch.equal(resized, torch.from_numpy(np.ascontiguousarray(expect)))
    # Issue [hardening], item 8: a colour image was made grey for a one-channel model without a
    # word (finetune refuses the same mismatch); a grey image stored as RGB is read as grey.
    with pytest.raises(InputError) as e:
        read_image(path, [1, 8, 8], True)
    assert str(e.value) == (f"{path}: a colour image, the model takes 1-channel (grey) images (convert it to grey "
                            f"first: which grey is yours to choose)")
    grey_rgb = np.repeat(rgb[..., 1:2], 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "grey.png")
    grey = read_image(tmp_path / "grey.png", [1, 8, 8], True)
    assert grey.shape == (1, 8, 8) and torch.equal(grey[0], torch.from_numpy(np.array(
        Image.fromarray(grey_rgb).convert("L").resize((8, 8), Image.BILINEAR))))
    square = Image.fromarray(rgb[:, :8])
    assert torch.equal(pil_pixels(square, [3, 8, 8], False, "x"),
                       torch.from_numpy(np.ascontiguousarray(rgb[:, :8].transpose(2, 0, 1))))
    for channels in (2, 4):
        with pytest.raises(InputError) as e:
            pil_pixels(square, [channels, 8, 8], False, "frame")
        assert str(e.value) == (f"frame: the model takes {channels}-channel images; only 1 and 3 can be read "
                                f"from files")
    from edge_sel.predict.images import as_pixels
    with pytest.raises(InputError, match="image is 9x8"):                  # files given to the API: never resized
        as_pixels([path], [3, 8, 8])


def test_the_pixel_range_is_0_to_255_within_rounding_and_never_nan(tmp_path):
    """Mutants: the slack's bounds (< and >, 255), NaN let through, a scale applied to uint8 images,
    integer pixels left in their own dtype."""
    from edge_sel.predict.images import PIXEL_SLACK, as_pixels
    shape = [1, 1, 2]
    edge = torch.tensor([[[-PIXEL_SLACK, 255 + PIXEL_SLACK]]], dtype=torch.float64)
    assert torch.equal(as_pixels(edge, shape, scale=1), torch.tensor([[[[0.0, 255.0]]]]))
    for bad, said in ((torch.tensor([[[0.0, 255.5]]]), "span 0 to 255.5 after scale=1"),
                      (torch.tensor([[[-0.01, 1.0]]]), "span -0.01 to 1 after scale=1"),
                      (torch.tensor([[[float("nan"), 1.0]]]), "span nan to nan after scale=1")):
        with pytest.raises(InputError) as e:
            as_pixels(bad, shape, scale=1)
        assert str(e.value) == f"images of dtype float32 {said}: pixels are 0-255"
    wide = as_pixels(torch.tensor([[[200, 100]]], dtype=torch.int64), shape)          # integers: the uint8 pixels
    assert wide.dtype == torch.uint8 and wide.tolist() == [[[[200, 100]]]]
    half = as_pixels(torch.tensor([[[200, 100]]], dtype=torch.uint8), shape, scale=0.5)
    assert half.dtype == torch.float32 and half.tolist() == [[[[100.0, 50.0]]]]
    with pytest.raises(InputError) as e:
        as_pixels([torch.zeros(1, 1, 2), torch.zeros(1, 1, 3)], shape)
    assert str(e.value).startswith("images of different shapes: stack expects each tensor to be equal size")


class StandIn:
    """A predictor that answers class i % 10 and the condition "dark" for odd i, where i counts the
    images it was asked about; it records each batch's size."""
    backend = "torch"

    def __init__(self):
        self.seen, self.batches = 0, []
        self.chooser = type("Chooser", (), {"names": ["clean", "dark"], "window": 7})()

    def predict(self, batch):
        from edge_sel.predict.predictor import Prediction
        idx = list(range(self.seen, self.seen + len(batch)))
        self.seen += len(batch)
        self.batches.append(len(batch))
        return Prediction([i % 10 for i in idx], [CLASSES[i % 10] for i in idx],
                          ["dark" if i % 2 else "clean" for i in idx], torch.zeros(len(batch), 10))

    def flops_per_image(self):
        return {"forward": 123, "choice": 45}


def test_the_lines_and_the_summary_of_a_prediction_run(tmp_path, monkeypatch):
    """predict_files with a stand-in predictor and clock: each line's fields, the latency of its
    batch, the counts per condition, the summary's figures (mutants that only test_predict.py's
    trained models saw)."""
    from edge_sel.predict import run
    files = [tmp_path / f"{i}.png" for i in range(5)]
    images = [torch.zeros(1, 8, 8, dtype=torch.uint8)] * 5
    clock = iter([0.0, 1.0, 1.0001234567, 2.0, 2.25, 3.0, 3.125, 4.0])
    monkeypatch.setattr(run.time, "perf_counter", lambda: next(clock))
    meter = type("Meter", (), {"begin": lambda self, what: None,
                               "end": lambda self, what: {"energy_j": 2.0, "energy_source": "rapl",
                                                          "energy_method": "measured"}})()
    progress = []
    sink = LineSink(tmp_path / "preds.jsonl")
    p = StandIn()
    summary = run.predict_files(p, files, images, sink, 2, meter, lambda done, total: progress.append((done, total)))
    sink.close()
    assert p.batches == [2, 2, 1] and progress == [(2, 5), (4, 5), (5, 5)]
    lines = (tmp_path / "preds.jsonl").read_text().splitlines()
    latency = [0.123, 0.123, 250.0, 250.0, 125.0]
    assert [json.loads(line) for line in lines] == [
        {"path": str(f), "class": i, "label": CLASSES[i], "condition": "dark" if i % 2 else "clean",
         "latency_ms": latency[i]} for i, f in enumerate(files)]
    rss = summary.pop("peak_rss_mb")
    assert isinstance(rss, float) and rss > 0
    assert summary == {
        "images": 5, "batch_size": 2, "backend": "torch", "conditions": ["clean", "dark"],
        "chosen": {"clean": 3, "dark": 2}, "window": 7, "wall_s": 4.0, "images_per_s": 1.25,
        "latency_ms_p50": pytest.approx(125.0), "latency_ms_p95": pytest.approx(250.0),
        "latency_note": "per batch: choosing each image's condition and the forward pass (file decoding excluded)",
        "energy_j": 2.0, "joules_per_1000": 400.0, "energy_source": "rapl", "energy_method": "measured",
        "flops_forward_per_image": 123, "flops_choice_per_image": 45}
    one = StandIn()
    clock = iter([0.0] * 6)
    run.predict_files(one, files[:2], images[:2], LineSink(None))           # a frame at a time by default
    assert one.batches == [1, 1]


def test_a_percentile_is_torchs_in_double_precision_and_none_of_nothing():
    from edge_sel.predict.run import percentile
    assert percentile([], 0.5) is None
    assert percentile([0.1, 0.2], 0.5) == 0.1 + 0.5 * (0.2 - 0.1)
    assert percentile([3.0], 0.95) == 3.0


def test_a_line_sink_opens_writes_and_closes_as_it_says(tmp_path, monkeypatch):
    """Mutants of LineSink: "-" is stdout, the file's mode, the refusal's words, a one-byte write
    taken for none, the whole-line count over several writes, the descriptor closed."""
    from edge_sel.predict.run import read_inputs
    assert LineSink(None).fd is None and LineSink(tmp_path / "-").fd is not None
    assert LineSink(__import__("pathlib").Path("-")).fd is None
    mask = os.umask(0)
    try:
        sink = LineSink(tmp_path / "p.jsonl")
    finally:
        os.umask(mask)
    assert os.stat(tmp_path / "p.jsonl").st_mode & 0o777 == 0o644
    with pytest.raises(InputError) as e:
        LineSink(tmp_path / "none" / "p.jsonl")
    assert str(e.value) == f"--out {tmp_path / 'none' / 'p.jsonl'}: cannot write (No such file or directory)"
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:1])))        # a byte a call
    sink.write("a\n")
    sink.write("bc\n")
    assert sink.whole == 5
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    with pytest.raises(WriteError) as e:
        sink.write("d\n")
    assert str(e.value) == (f"--out {tmp_path / 'p.jsonl'}: cannot write (the system wrote nothing); it keeps the "
                            f"whole lines written before (5 bytes)")
    fd = sink.fd
    sink.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    big = tmp_path / "big.png"
    Image.new("L", (16, 16)).save(big)
    files, images = read_inputs([big], [1, 8, 8], True)                 # --resize reaches the reader
    assert files == [big] and images[0].shape == (1, 8, 8)


def test_a_summary_without_a_bank_and_its_rounded_figures(tmp_path, monkeypatch):
    """Mutants: the wall time's sign and rounding, images/s's rounding and its zero test, the
    conditions and window of a predictor without a bank, peak memory to 0.1 MB."""
    from edge_sel.predict import run
    p = StandIn()
    p.chooser = None
    clock = iter([10.0, 10.5, 10.6, 10.123456 + 0.5])
    monkeypatch.setattr(run.time, "perf_counter", lambda: next(clock))
    s = run.predict_files(p, [tmp_path / "a.png"], [torch.zeros(1, 8, 8, dtype=torch.uint8)], LineSink(None))
    assert (s["conditions"], s["window"], s["chosen"]) == (None, None, {"clean": 1})
    assert s["wall_s"] == 0.6235 and s["images_per_s"] == 1.6 and s["peak_rss_mb"] == round(s["peak_rss_mb"], 1)
    clock = iter([0.0, 0.0, 0.0, 0.0])
    assert run.predict_files(StandIn(), [tmp_path / "a.png"], [torch.zeros(1, 8, 8, dtype=torch.uint8)],
                             LineSink(None))["images_per_s"] is None
    clock = iter([0.0, 0.0, 0.0, 3.0])
    assert run.predict_files(StandIn(), [tmp_path / "a.png"] * 4, [torch.zeros(1, 8, 8, dtype=torch.uint8)] * 4,
                             LineSink(None), 4)["images_per_s"] == 1.33
