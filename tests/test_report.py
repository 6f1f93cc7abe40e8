"""`edge-sel report`: a self-contained HTML page whose images are real PNG files beside it, tables
with one row per run, energy labelled as estimated or measured, and one-line errors (exit 2)."""

import csv
import sys
from html.parser import HTMLParser

import pytest

from edge_sel.cli import main
from edge_sel.report.runs import RunData, energy_axis_label, totals

from helpers import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dense run, a gated run (threshold traces) and a SEL run (stages) on synthetic data."""
    root = tmp_path_factory.mktemp("report-runs")
    run_cli("pretrain", "--dataset", "synthetic", "--epochs", 1, "--batch-size", 32, "--shard", "0/2",
            "--out", root / "warm", "--quiet")
    common = ["--checkpoint", root / "warm", "--dataset", "synthetic", "--shard", "1/2", "--epochs", 2,
              "--batch-size", 48, "--quiet"]
    variants = {"dense": [], "sundew": ["--strategy", "sundew", "--target-activation", 0.5],
                "sel": ["--strategy", "sel", "--stages", "0-50:0.3:1,40-100:0.5:1"]}
    for name, extra in variants.items():    # the labelled estimate, whatever sensors this machine has
        run_cli("finetune", *common, "--out", root / name, "--meter", "estimate", *extra)
    return [root / name for name in variants]


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("a", "link", "script"):
            self.links.append(attrs.get("href") or attrs.get("src") or "")


def test_report_writes_html_referencing_real_pngs(runs, tmp_path):
    out = tmp_path / "report"
    result = run_cli("report", *runs, "--out", out)
    assert f"report: {out / 'report.html'}" in result.output
    page = Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    page.close()
    assert "html" in page.tags and "table" in page.tags
    # Self-contained: no scripts, no stylesheets or images from elsewhere, only files beside the page.
    assert "script" not in page.tags and "link" not in page.tags
    assert all("://" not in src and "/" not in src for src in page.images + page.links)
    names = set(page.images)
    assert {"pareto.png", "epochs.png", "power.png", "gating.png", "stages.png"} <= names
    assert sum(n.startswith("classes_") for n in names) == len(runs)
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert len(rows) == len(runs)
    assert all(0 < float(r["final_test_acc"]) <= 1 and float(r["flops_train"]) > 0 for r in rows)
    md = (out / "runs.md").read_text().splitlines()
    assert len(md) == 2 + len(runs) and md[0].startswith("| run |")


def test_report_says_whether_energy_was_measured(runs, tmp_path):
    out = tmp_path / "report"
    run_cli("report", runs[0], "--out", out)
    text = (out / "report.html").read_text()
    md = (out / "runs.md").read_text()
    # The runs used the labelled estimate: the page and the table say it is not a measurement.
    assert "not measurements" in text and "(estimated)" in md


def test_energy_labels_name_source_and_kind():
    est = RunData("a", [{"energy_source": "estimate", "energy_method": "estimated", "energy_j": 3.0}])
    gpu = RunData("b", [{"energy_source": "nvml", "energy_method": "counter", "energy_j": 5.0}])
    none = RunData("c", [{"energy_j": None}])
    assert energy_axis_label([est]) == "energy (J, estimated)"
    assert energy_axis_label([gpu]) == "energy (J, measured: nvml)"
    assert energy_axis_label([est, gpu]) == "energy (J, mixed: estimated, measured: nvml)"
    assert energy_axis_label([none]) == "energy (J, not measured)"
    assert totals(gpu)["energy_kind"] == "measured: nvml" and totals(none)["energy_j"] is None


def run_main(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["edge-sel", *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    return info.value.code, err.strip().splitlines()


def test_bad_input_is_one_line_exit_2(runs, tmp_path, monkeypatch, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    code, lines = run_main(["report", runs[0], not_a_run, "--out", tmp_path / "r"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and "metrics.jsonl" in lines[0] and str(not_a_run) in lines[0]
    assert not (tmp_path / "r").exists()           # nothing written when an input is bad
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, lines = run_main(["report", runs[0], "--out", a_file / "sub"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("edge-sel: error: --out")
    code, lines = run_main(["report", "--out", tmp_path / "r"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1
