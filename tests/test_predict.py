"""A deployed model where a device uses it: frame by frame, in mixed batches, in ONNX Runtime, and
`edge-sel predict` on files (digits: a clean warmup and a night on low-contrast digits, whose bank
keeps the source's statistics and the low-contrast ones)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import digits_warmup_with_memory, needs_ort, run_cli, run_main
from edge_sel.core.bn_bank import BANK_FILE, SavedCondition, read_bank, write_bank
from edge_sel.data.camera import apply_condition, camera_stream
from edge_sel.engine.evaluation.bn_bank import images_fingerprint
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.models import load_checkpoint
from edge_sel.predict.conditions import normalised
from edge_sel.predict.predictor import Predictor
from edge_sel.predict.statistics import named_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")

DARK = "contrast:4"
FIXED = ["--batch-size", "64", "--seed", "3", "--quiet", "--memory-format", "contiguous", "--precision", "fp32"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    return digits_warmup_with_memory(tmp_path_factory.mktemp("predict") / "warm")


@pytest.fixture(scope="module")
def banked(warm, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "banked"
    run_cli("finetune", "--checkpoint", warm, "--epochs", "1", "--out", out, "--bn-conditions", "3",
            "--dataset", "digits", "--shard", "1/2", "--shift", f"corrupt={DARK}", *FIXED)
    return out


@pytest.fixture(scope="module")
def test_split():
    return DataOptions("digits", shard="1/2").load().test


def accuracy(classes, labels) -> float:
    return float((torch.tensor(classes) == labels).float().mean())


def frames(predictor: Predictor, images: torch.Tensor) -> tuple[list[int], list[str]]:
    classes, conditions = [], []
    for im in images:
        out = predictor.predict(im)
        classes += out.classes
        conditions += out.conditions
    return classes, conditions


def test_a_stream_that_switches_condition_is_followed_within_the_window(banked, test_split):
    """Clean frames, then low-contrast ones, then clean again (classes in runs of 30): every clean
    frame of the first segment keeps the source's statistics, and each switch is followed within
    3 frames (docs/predict.md: a switch needs about ln W nats; a low-contrast digit brings far more)."""
    stream = camera_stream(test_split, ["clean", DARK], 90, 30, seed=1)
    predictor = Predictor(banked)
    _, chosen = frames(predictor, stream.images[:270])
    expected = ["source" if c == "clean" else "condition-1" for c in stream.conditions[:270]]
    assert chosen[:90] == expected[:90]
    for switch in (90, 180):
        late = next(i for i in range(switch, switch + 90) if chosen[i] == expected[i])
        assert late - switch <= 3, f"switch at frame {switch} followed at {late}"
        assert chosen[late:switch + 90] == expected[late:switch + 90]


def test_one_frame_at_a_time_matches_whole_batches_and_never_falls_below_the_warmup(banked, warm, test_split):
    stream = camera_stream(test_split, ["clean", DARK], 90, 30, seed=2)
    classes, _ = frames(Predictor(banked), stream.images)
    warmup, _ = frames(Predictor(warm), stream.images)
    whole = Predictor(banked)
    for condition in ("clean", DARK):
        rows = torch.tensor([i for i, c in enumerate(stream.conditions) if c == condition])
        batch = whole.predict(stream.images[rows]).classes
        frame_acc = accuracy([classes[i] for i in rows], stream.labels[rows])
        assert abs(frame_acc - accuracy(batch, stream.labels[rows])) <= 0.01
        assert frame_acc >= accuracy([warmup[i] for i in rows], stream.labels[rows])


def test_a_mixed_batch_routes_each_image_to_its_condition(banked, warm, test_split):
    rows = torch.arange(64)
    clean = test_split.images[rows]
    dark = apply_condition(test_split, rows, DARK, 0)
    order = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    images = torch.cat([clean, dark])[order]
    labels = torch.cat([test_split.labels[rows], test_split.labels[rows]])[order]
    is_dark = (order >= 64)
    out = Predictor(banked).predict(images)
    chosen_dark = torch.tensor([c == "condition-1" for c in out.conditions])
    assert float((chosen_dark == is_dark).float().mean()) >= 0.95
    # Each half scores what it scores alone, and neither falls below the warmup or the model's own statistics.
    alone_clean = Predictor(banked).predict(clean).classes
    alone_dark = Predictor(banked).predict(dark).classes
    got = torch.tensor(out.classes)
    for half, alone in ((~is_dark, alone_clean), (is_dark, alone_dark)):
        mixed_acc = float((got[half] == labels[half]).float().mean())
        assert mixed_acc >= accuracy(alone, labels[half]) - 0.02
        for other in (Predictor(warm), Predictor(banked, use_bank=False)):
            plain = torch.tensor(other.predict(images).classes)
            assert mixed_acc >= float((plain[half] == labels[half]).float().mean())


def test_a_bank_of_the_source_alone_predicts_exactly_as_the_plain_model(warm, test_split, tmp_path):
    model, card = load_checkpoint(warm)
    own = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in named_batchnorm(model)}
    only = tmp_path / "only"
    run_cli("finetune", "--checkpoint", warm, "--epochs", "0", "--out", only, "--dataset", "digits",
            "--shard", "1/2", *FIXED)
    images = test_split.images[:64]
    write_bank(only / BANK_FILE, [SavedCondition("source", images, own, 1, {},
                                                 images_fingerprint(images, card.mean, card.std))])
    banked, plain = Predictor(only), Predictor(only, use_bank=False)
    for im in test_split.images[:40]:
        a, b = banked.predict(im), plain.predict(im)
        assert torch.equal(a.logits, b.logits) and a.conditions == ["source"]
    assert torch.equal(banked.predict(test_split.images).logits, plain.predict(test_split.images).logits)


def test_predicting_leaves_the_model_its_own_statistics(banked, test_split):
    predictor = Predictor(banked)
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    predictor.predict(apply_condition(test_split, torch.arange(8), DARK, 0))
    predictor.predict(test_split.images[:1])
    after = predictor.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def write_frames(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy()).save(folder / f"{i:05d}.png")
    return folder


def test_predict_writes_a_line_per_image_in_file_name_order_and_a_summary(banked, test_split, tmp_path, capsys):
    stream = camera_stream(test_split, ["clean", DARK], 60, 30, seed=3)
    folder = write_frames(stream.images[:120], tmp_path / "frames")
    out, summary = tmp_path / "pred.jsonl", tmp_path / "summary.json"
    code, err = run_main(["predict", "--checkpoint", banked, folder, "--out", out, "--summary", summary], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(x["path"]).name for x in lines] == [f"{i:05d}.png" for i in range(120)]
    assert set(lines[0]) >= {"path", "class", "label", "condition", "latency_ms"}
    expected = Predictor(banked)
    assert [x["class"] for x in lines] == frames(expected, stream.images[:120])[0]
    s = json.loads(summary.read_text())
    assert s["images"] == 120 and s["chosen"] == {"source": 60, "condition-1": 60}
    assert s["latency_ms_p95"] >= s["latency_ms_p50"] > 0 and s["images_per_s"] > 0
    assert s["energy_source"] and s["joules_per_1000"] > 0 and s["peak_rss_mb"] > 0
    assert "latency p50" in err and "per 1,000 images" in err


@needs_ort      # the export needs onnx and the training build, not only an onnxruntime
def test_ort_predicts_the_same_classes_and_logits_as_torch(banked, test_split, tmp_path, capsys):
    art = tmp_path / "art"
    run_cli("export", "--checkpoint", banked, "--out", art, "--scheme", "classifier")
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["conditions"]["names"] == ["source", "condition-1"]
    stream = camera_stream(test_split, ["clean", DARK], 60, 30, seed=4)
    torch_p, ort_p = Predictor(banked), Predictor(art, backend="ort")
    for im in stream.images:
        a, b = torch_p.predict(im), ort_p.predict(im)
        assert a.classes == b.classes and a.conditions == b.conditions
        assert float((a.logits - b.logits).abs().max()) <= 1e-4
    folder = write_frames(stream.images[:30], tmp_path / "frames")
    code, err = run_main(["predict", "--checkpoint", art, "--backend", "ort", folder, "--out", tmp_path / "o.jsonl",
                          "--quiet"], capsys)
    assert code == 0, err
    assert [json.loads(x)["class"] for x in (tmp_path / "o.jsonl").read_text().splitlines()] == \
        frames(Predictor(banked), stream.images[:30])[0]


def one_line_exit_2(capsys, argv) -> str:
    code, err = run_main(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_input_to_predict_is_one_line_and_exit_2(banked, test_split, tmp_path, capsys):
    folder = write_frames(test_split.images[:3], tmp_path / "frames")
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")
    assert "nowhere" in one_line_exit_2(capsys, ["predict", "--checkpoint", banked, tmp_path / "nowhere"])
    (tmp_path / "notes.png").write_text("not an image")
    assert "notes.png" in one_line_exit_2(capsys, ["predict", "--checkpoint", banked, tmp_path / "notes.png"])
    Image.new("L", (16, 16)).save(tmp_path / "big.png")
    assert "16x16" in one_line_exit_2(capsys, ["predict", "--checkpoint", banked, tmp_path / "big.png"])
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in banked.iterdir():
        if f.is_file():
            (damaged / f.name).write_bytes(f.read_bytes())
    (damaged / BANK_FILE).write_bytes((banked / BANK_FILE).read_bytes()[:500])
    assert BANK_FILE in one_line_exit_2(capsys, ["predict", "--checkpoint", damaged, folder, "--out", out,
                                                 "--overwrite"])
    (damaged / BANK_FILE).unlink()
    (damaged / "model.safetensors").write_bytes(b"\0" * 64)
    assert "model.safetensors" in one_line_exit_2(capsys, ["predict", "--checkpoint", damaged, folder, "--out", out,
                                                           "--overwrite"])
    assert out.read_text() == "kept\n"          # nothing already written is lost to a refused run, --overwrite or not
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    if not os.access(readonly, os.W_OK):        # root writes anywhere
        assert "--out" in one_line_exit_2(capsys, ["predict", "--checkpoint", banked, folder,
                                                   "--out", readonly / "p.jsonl"])
    assert "--batch-size" in one_line_exit_2(capsys, ["predict", "--checkpoint", banked, folder, "--batch-size", "0"])


@pytest.mark.slow
def test_sigint_mid_stream_exits_130_and_leaves_whole_lines(banked, test_split, tmp_path):
    images = torch.cat([test_split.images] * 6)
    folder = write_frames(images, tmp_path / "frames")
    out = tmp_path / "pred.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edge_sel", "predict", "--checkpoint", str(banked), str(folder),
                             "--out", str(out), "--quiet"], stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 2000):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    text = out.read_text()
    assert text.endswith("\n") and 0 < len(text.splitlines()) < len(images)
    assert all(json.loads(line)["path"] for line in text.splitlines())


def test_load_model_routes_per_image_keeps_its_own_buffers_and_is_safe_between_threads(banked, test_split):
    from concurrent.futures import ThreadPoolExecutor

    from edge_sel import load_model
    model, card = load_model(banked)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean = normalised(test_split.images[:32], card.mean, card.std)
    dark = normalised(apply_condition(test_split, torch.arange(32), DARK, 0), card.mean, card.std)
    with torch.inference_mode():
        alone = [model(clean), model(x=dark)]            # a keyword input works too
        with ThreadPoolExecutor(4) as pool:
            shared = list(pool.map(lambda i: model([clean, dark][i % 2]), range(16)))
    assert all(torch.equal(y, alone[i % 2]) for i, y in enumerate(shared))
    assert torch.equal(alone[0], Predictor(banked).predict(test_split.images[:32]).logits)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_promote_counts_choosing_the_deployed_models_conditions(banked, tmp_path):
    from edge_sel.engine.night.promote import validate_deployed
    from edge_sel.predict.conditions import distance_flops, feature_flops
    config = json.loads((banked / "config.json").read_text())
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in banked.iterdir():
        if f.is_file() and f.name != BANK_FILE:
            (plain / f.name).write_bytes(f.read_bytes())
    _, _, with_bank = validate_deployed(config, banked)
    _, _, without = validate_deployed(config, plain)
    shape = [1, 8, 8]
    kept = sum(len(c.images) for c in read_bank(banked, shape))     # the conditions' images, described once
    per_image = feature_flops(shape) + distance_flops(2, 3)        # each judged image's features and distances
    assert with_bank["flops_bank_choice"] == kept * feature_flops(shape)
    assert with_bank["flops"] - without["flops"] == kept * feature_flops(shape) + with_bank["samples"] * per_image
    # Judged with its bank: clean validation images take the source's statistics (a model judged
    # without them, its bank still counted, passed: the FLOPs above are all that was checked).
    clean = {**config, "data": {**config["data"], "shift": None}}
    with_bank, without = validate_deployed(clean, banked)[0], validate_deployed(clean, plain)[0]
    assert with_bank > without + 0.1


def test_the_trigger_judges_frames_with_the_deployed_models_bank(banked, tmp_path):
    import csv
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in banked.iterdir():
        if f.is_file() and f.name != BANK_FILE:
            (plain / f.name).write_bytes(f.read_bytes())
    args = ["--dataset", "digits", "--shard", "1/2", "--shift", "corrupt=contrast:4;frames=3", "--subset", "120",
            "--budget-frames", "60", "--significance", "entropy"]
    run_cli("trigger", "--checkpoint", banked, *args, "--out", tmp_path / "banked")
    run_cli("trigger", "--checkpoint", plain, *args, "--out", tmp_path / "plain-out")
    with_bank = json.loads((tmp_path / "banked" / "trigger.json").read_text())
    without = json.loads((tmp_path / "plain-out" / "trigger.json").read_text())
    assert with_bank["bn_bank"]["conditions"] == ["source", "condition-1"] and without["bn_bank"]["conditions"] is None
    # The significance is the bank's model's entropy: the same frames, other scores.
    sig = lambda d: {r["frame_id"]: r["significance"] for r in csv.DictReader(open(tmp_path / d / "kept.csv"))}
    a, b = sig("banked"), sig("plain-out")
    assert any(a[k] != b[k] for k in set(a) & set(b)) or set(a) != set(b)
    kept = sum(len(c.images) for c in read_bank(banked, [1, 8, 8]))
    from edge_sel.predict.conditions import distance_flops, feature_flops
    assert with_bank["cost"]["flops_forward"] - without["cost"]["flops_forward"] == \
        kept * feature_flops([1, 8, 8]) + with_bank["frames_seen"] * (feature_flops([1, 8, 8]) + distance_flops(2, 3))


def damaged_copy(banked: Path, where: Path, edit) -> Path:
    """A copy of `banked` whose bank is rewritten with `edit(conditions)` applied."""
    shutil.copytree(banked, where, ignore=shutil.ignore_patterns("state"))
    conditions = read_bank(banked, [1, 8, 8])
    edit(conditions)
    import safetensors.torch
    tensors, meta = {}, []
    for i, c in enumerate(conditions):
        tensors[f"{i}.images"] = c.images
        tensors[f"{i}.fingerprint_mean"], tensors[f"{i}.fingerprint_var"] = c.fingerprint
        for layer, (mean, var) in c.stats.items():
            tensors[f"{i}.mean.{layer}"], tensors[f"{i}.var.{layer}"] = mean, var
        meta.append({"name": c.name, "nights": c.nights, "layers": list(c.stats), **c.info})
    safetensors.torch.save_file(tensors, str(where / BANK_FILE), metadata={"conditions": json.dumps(meta)})
    return where


def test_every_field_of_a_damaged_bank_is_refused_in_one_line(banked, test_split, tmp_path, capsys):
    """Before: an empty bank gave a RuntimeError at the first prediction, a missing layer a KeyError,
    a non-integer `nights` a ValueError every night, a NaN fingerprint silently captured batches."""
    folder = write_frames(test_split.images[:2], tmp_path / "frames")
    first_layer = lambda cs: next(iter(cs[0].stats))        # noqa: E731

    def nan_fingerprint(cs):
        cs[1].fingerprint[0][0] = float("nan")

    def negative_variance(cs):
        cs[0].stats[first_layer(cs)][1][0] = -1.0

    def fractional_nights(cs):
        cs[1].nights = 1.5

    def missing_layer(cs):
        layer = first_layer(cs)
        for c in cs:
            c.stats.pop(layer)

    def wrong_size(cs):
        layer = first_layer(cs)
        for c in cs:
            c.stats[layer] = (c.stats[layer][0][:-1].clone(), c.stats[layer][1][:-1].clone())

    cases = {"empty": (lambda cs: cs.clear(), "no condition"), "nan": (nan_fingerprint, "non-finite fingerprint"),
             "negative": (negative_variance, "negative"), "nights": (fractional_nights, "nights"),
             "missing": (missing_layer, "do not fit"), "size": (wrong_size, "do not fit")}
    for name, (edit, said) in cases.items():
        damaged = damaged_copy(banked, tmp_path / name, edit)
        for argv in (["predict", "--checkpoint", damaged, folder], ["export", "--checkpoint", damaged,
                                                                    "--out", tmp_path / f"art-{name}"]):
            err = one_line_exit_2(capsys, argv)
            assert BANK_FILE in err and said in err, (name, err)
