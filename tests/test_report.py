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


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory):
    """A digits run the guard refuses (the adaptation recipe on low-contrast digits forgets the
    clean ones), with replayed source digits in its batches (--replay 0.5)."""
    from helpers import SAME_CHOICES, digits_warmup_with_memory
    root = tmp_path_factory.mktemp("report-guard")
    warm = digits_warmup_with_memory(root / "warm")
    run_cli("finetune", "--checkpoint", warm, "--dataset", "digits", "--shard", "1/2", "--epochs", 2,
            "--shift", "corrupt=contrast:4", "--preset", "adapt", "--replay", 0.5, "--batch-size", 64,
            "--lr", 0.05, "--meter", "estimate", "--quiet", "--out", root / "adapt", *SAME_CHOICES)
    return root / "adapt"


@pytest.mark.slow
def test_report_states_the_model_a_run_hands_back_before_its_last_epoch(refused_run, tmp_path):
    import json
    summary = json.loads((refused_run / "summary.json").read_text())
    recs = [json.loads(line) for line in (refused_run / "metrics.jsonl").read_text().splitlines()]
    baseline, epochs = recs[0], recs[1:]
    assert summary["kept"]["kept"] == "warmup" and summary["kept"]["rule"] == "forgets"
    assert epochs[-1]["test_acc"] > summary["output_model"]["test_acc"] + 0.1     # the last epoch overstates
    out = tmp_path / "report"
    run_cli("report", refused_run, "--out", out)
    row = next(csv.DictReader(open(out / "runs.csv")))
    header = next(csv.reader(open(out / "runs.csv")))
    # What the run hands back comes before any last-epoch figure, in csv, md and html.
    assert header.index("output_test_acc") < header.index("final_test_acc")
    assert float(row["output_test_acc"]) == pytest.approx(summary["output_model"]["test_acc"])
    assert float(row["output_clean_test_acc"]) == pytest.approx(baseline["clean_test_acc"])
    assert row["output_model"] == "start (guard refused the rest)"
    md = (out / "runs.md").read_text().splitlines()
    cells = [c.strip() for c in md[2].split("|")]
    heads = [c.strip() for c in md[0].split("|")]
    assert cells[heads.index("output test acc %")] == f"{100 * summary['output_model']['test_acc']:.2f}"
    assert heads.index("output test acc %") < heads.index("last epoch test acc %")
    text = (out / "report.html").read_text()
    assert text.index("output test acc %") < text.index("last epoch test acc %")
    # Activation as the records say it (replayed source images are not local samples).
    share = sum(r["activation"] * r["samples_available"] for r in epochs) / sum(r["samples_available"] for r in epochs)
    assert float(row["activation"]) == pytest.approx(share)
    assert sum(r["backward_samples"] for r in epochs) / sum(r["samples_available"] for r in epochs) > share + 0.05


def test_cut_records_and_a_torn_or_missing_summary_are_warned(runs, tmp_path):
    """A metrics.jsonl cut mid-record and a summary.json torn or missing load with a warning each;
    best validation stays the whole run's where the summary states it."""
    import json
    import shutil

    from edge_sel.report.runs import load_run
    from edge_sel.report.writer import warnings
    cut = tmp_path / "cut"
    shutil.copytree(runs[0], cut)
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:-1] + [lines[-1][:40]]) + "\n")
    summary = json.loads((cut / "summary.json").read_text())
    run = load_run(cut)
    assert run.label == "cut" and len(run.warnings) == 2
    assert "1 of" in run.warnings[0] and "lines unreadable" in run.warnings[0]
    assert f"holds 1 of the {summary['epochs_run']} epochs" in run.warnings[1]
    t = totals(run)
    assert (t["best_val_acc"], t["best_val_epoch"]) == (summary["best_val"]["val_acc"], summary["best_val"]["epoch"])
    (cut / "summary.json").write_text("{")
    assert "summary.json unreadable" in load_run(cut).warnings[-1]
    (cut / "summary.json").unlink()
    assert "summary.json missing" in warnings([load_run(cut)])[-1]


def test_a_run_of_no_epoch_has_its_best_validation_at_the_start(runs, tmp_path):
    from edge_sel.report.runs import load_run
    run_cli("finetune", "--checkpoint", runs[0].parent / "warm", "--dataset", "synthetic", "--shard", "1/2",
            "--epochs", 0, "--batch-size", 48, "--quiet", "--out", tmp_path / "none")
    t = totals(load_run(tmp_path / "none"))
    assert t["best_val_epoch"] == "start" and t["epochs"] == 0 and t["output_test_acc"] is not None


def test_scoring_and_calibration_flops_have_a_column_each():
    from edge_sel.report.tables import RUN_COLUMNS, run_row
    run = RunData("r", [{"epoch": 0, "flops_scoring": 2e9, "flops_calibration": 5e9, "flops_train": 9e9}])
    row = run_row(run)
    assert (row["flops_scoring"], row["flops_calibration"]) == (2e9, 5e9)
    heads = {key: head for key, head, _ in RUN_COLUMNS}
    assert heads["flops_scoring"] == "scoring GFLOP" and heads["flops_calibration"] == "calibration GFLOP"


def test_planning_has_a_row_and_a_part_of_its_own_that_add_up_to_the_totals():
    """A budgeted run on a new device spent 779.7 J of its first epoch's 852.6 J planning, shown as the
    epoch's; the table and the closing line now say planning apart, and the parts add to the total."""
    from edge_sel.report.summary import all_in_line, epoch_table
    base = {"phase": "baseline", "val_acc": 0.5, "test_acc": 0.5, "eval_energy_j": 1.0,
            "energy_source": "estimate", "energy_method": "estimated"}
    first = {"epoch": 0, "wall_s": 7.25, "energy_j": 6.0, "flops_train": 3e9, "memory_plan_wall_s": 7.0,
             "memory_plan_energy_j": 5.0, "memory_plan_trial_flops": 1e9, "eval_energy_j": 0.4,
             "energy_source": "estimate", "energy_method": "estimated"}
    rows = {line.split()[0]: line.split() for line in epoch_table([base, first]).splitlines()[2:]}
    assert rows["plan"][7:10] == ["1.0", "7.0", "5.0"] and rows["0"][7:10] == ["2.0", "0.2", "1.0"]
    # A pretrain's shipping (anchors and Fisher, each set's recipes: 1,036 s of a 1,100 s run) has rows too.
    from edge_sel.report.summary import shipping_rows
    shipped = shipping_rows({"source_memory": {"flops": 2e11, "wall_s": 33.0, "energy_j": 329.2},
                             "set_gains": {"flops": 1.6e13, "wall_s": 1036.5, "energy_j": 13389.5}})
    rows = {line.split()[0]: line.split() for line in epoch_table([base, first], shipped).splitlines()[2:]}
    assert rows["anchors"][7:10] == ["200.0", "33.0", "329.2"] and rows["recipes"][7:10] == ["16000.0", "1036.5", "13389.5"]
    totals = {"energy_j": 6.0, "eval_energy_j": 1.4, "energy_all_j": 7.4, "planning_energy_j": 5.0,
              "eval_energy_share": 1.4 / 7.4, "energy_method": "estimated", "flops_all": 4e9, "flops_train": 3e9}
    line = all_in_line({"totals": totals, "output_model": {"weights": "last", "test_acc": 0.6}})
    assert "7.4 J estimated (training 1.0, planning 5.0, evaluation 1.4, 19% of it)" in line
    import io
    from edge_sel.engine.loop.progress_log import ProgressLog
    log = io.StringIO()
    ProgressLog(False, 1, log).epoch(first)
    assert " 0.2 s, 1.0 J estimate/estimated; evaluation - s (planning 7.0 s, 5.0 J before it)" in log.getvalue()
