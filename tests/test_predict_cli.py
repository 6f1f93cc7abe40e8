"""`edge-sel predict` as a command (edge_sel/predict/cli.py) on the untrained tiny checkpoint of
tests/test_predictor_device.py: the counts it refuses, where it may write, its progress and
closing lines, and the summary file. No training; each run predicts a handful of 8 x 8 frames."""

import json

import pytest

from helpers import run_main, run_main_said
from test_device_inputs import png_bytes
from test_predictor_device import banked, checkpoint, condition_images  # noqa: F401  (fixtures)
from edge_sel.predict import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(directory, n=5):
    directory.mkdir()
    for i, image in enumerate(condition_images("clean", n)):
        (directory / f"{i:02d}.png").write_bytes(png_bytes(image[0].numpy()))
    return directory


@pytest.mark.parametrize("args, said", [
    (["--batch-size", "0"], "--batch-size must be > 0, got 0"),
    (["--batch-size", "-2"], "--batch-size must be > 0, got -2"),
    (["--window", "1"], "--window must be > 1, got 1"),
    (["--window", "0"], "--window must be > 1, got 0"),
    (["--progress-every", "0"], "--progress-every must be > 0, got 0"),
    (["--threads", "0"], "--threads must be > 0, got 0"),
])
def test_counts_out_of_range_are_one_line_and_nothing_is_written(banked, tmp_path, capsys, args, said):  # noqa: F811
    images = frames(tmp_path / "in", 1)
    code, err = run_main(["predict", "--checkpoint", banked, images, "--out", tmp_path / "p.jsonl", *args], capsys)
    assert (code, err) == (2, f"edge-sel: error: {said}\n")
    assert not (tmp_path / "p.jsonl").exists()


def test_a_stream_writes_its_lines_its_progress_and_its_summary(banked, tmp_path, capsys):  # noqa: F811
    images = frames(tmp_path / "in")
    out, summary = tmp_path / "p.jsonl", tmp_path / "s.json"
    code, printed, err = run_main_said(["predict", "--checkpoint", banked, images, "--out", out, "--summary", summary,
                                        "--progress-every", "2", "--threads", "1"], capsys)
    assert (code, printed) == (0, "")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(images / f"{i:02d}.png") for i in range(5)]
    written = json.loads(summary.read_text())
    assert written["checkpoint"] == str(banked) and written["images"] == 5 and written["batch_size"] == 1
    assert written["threads"]["count"] == 1
    said = err.splitlines()
    # Without a terminal: a line every 2 images and at the end, then the closing lines.
    assert said[:3] == ["predict: 2/5 images", "predict: 4/5 images", "predict: 5/5 images"]
    assert said[3:] == cli.summary_lines(written)
    # The same in batches of 2 with a line every image: each batch's end, the last one once.
    code, printed, err = run_main_said(["predict", "--checkpoint", banked, images, "--out", out, "--overwrite",
                                        "--batch-size", "2", "--progress-every", "1"], capsys)
    assert code == 0 and err.splitlines()[:3] == ["predict: 2/5 images", "predict: 4/5 images", "predict: 5/5 images"]
    assert len(out.read_text().splitlines()) == 5


def test_quiet_says_nothing_and_lines_go_to_stdout_by_default(banked, tmp_path, capsys, monkeypatch):  # noqa: F811
    images = frames(tmp_path / "in", 2)
    code, printed, err = run_main_said(["predict", "--checkpoint", banked, images, "--quiet"], capsys)
    assert (code, err) == (0, "")
    assert [json.loads(line)["path"] for line in printed.splitlines()] == [str(images / "00.png"), str(images / "01.png")]
    # "-" is stdout, never a file of that name, even one that exists here.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").write_text("mine")
    code, printed, err = run_main_said(["predict", "--checkpoint", banked, images, "--quiet", "--out", "-"], capsys)
    assert (code, err) == (0, "") and len(printed.splitlines()) == 2 and (tmp_path / "-").read_text() == "mine"


def test_outputs_never_land_on_an_input_or_each_other_and_replace_only_when_asked(banked, tmp_path,  # noqa: F811
                                                                               capsys):
    images = frames(tmp_path / "in", 1)
    image = images / "00.png"
    before = image.read_bytes()
    preds = tmp_path / "p.jsonl"
    for args, option, what in (
            (["--out", image], "--out", f"lies inside the input {images}"),
            (["--summary", image], "--summary", f"lies inside the input {images}"),
            (["--out", preds, "--summary", preds], "--summary", f"is --out {preds}"),
            (["--out", banked / "model.json", "--overwrite"], "--out", f"lies inside --checkpoint {banked}")):
        code, err = run_main(["predict", "--checkpoint", banked, images, "--quiet", *args], capsys)
        out = args[args.index(option) + 1]
        assert (code, err) == (2, f"edge-sel: error: {option} {out}: {what}, which this command reads; an output "
                                  f"never replaces an input: choose another {option}\n")
    assert image.read_bytes() == before and not (tmp_path / "p.jsonl").exists()
    (tmp_path / "s.json").write_text("mine")
    code, err = run_main(["predict", "--checkpoint", banked, images, "--quiet", "--summary", tmp_path / "s.json"],
                         capsys)
    assert (code, err) == (2, f"edge-sel: error: --summary {tmp_path / 's.json'}: already exists; pass --overwrite to "
                              f"replace it\n")
    assert (tmp_path / "s.json").read_text() == "mine"
    code, err = run_main(["predict", "--checkpoint", banked, images, "--quiet", "--summary", tmp_path / "s.json",
                          "--overwrite"], capsys)
    assert code == 0 and json.loads((tmp_path / "s.json").read_text())["images"] == 1


def test_a_summary_that_cannot_be_written_is_refused_before_predicting(banked, tmp_path, capsys):  # noqa: F811
    images = frames(tmp_path / "in", 1)
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "s.json"
    code, err = run_main(["predict", "--checkpoint", banked, images, "--out", tmp_path / "p.jsonl",
                          "--summary", target], capsys)
    assert (code, err) == (2, f"edge-sel: error: --summary {target}: cannot write (Not a directory)\n")
    assert not (tmp_path / "p.jsonl").exists()


def test_the_closing_lines_say_each_figure():
    s = {"images": 12, "backend": "ort", "batch_size": 4, "images_per_s": 250.5, "latency_ms_p50": 1.234,
         "latency_ms_p95": 9.876, "joules_per_1000": None, "energy_source": None, "energy_method": None,
         "peak_rss_mb": 321.6, "chosen": {"clean": 9, "fog": 3}}
    assert cli.summary_lines(s) == [
        "predicted 12 images (ort, batch 4): 250.5 images/s; latency p50 1.23 ms, p95 9.88 ms",
        "energy -; peak resident memory 322 MiB",
        "conditions chosen: clean 9, fog 3"]
    s.update(joules_per_1000=12.345, energy_source="rapl", energy_method="measured")
    assert cli.summary_lines(s)[1] == "energy 12.35 J per 1,000 images (rapl, measured); peak resident memory 322 MiB"
