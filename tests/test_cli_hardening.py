"""The command line as a new user meets it: the CPU-time estimate's bounds, --threads, report --out,
file permissions, degenerate data, ORT optimizer defaults, messages and the report's figures."""

import errno
import json
import os
import re
import stat
import sys
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fake_sysfs import FakeClock, FakeNvml
from helpers import run_cli, run_main, summary
from PIL import Image

from edge_sel.energy import open_meter

pytestmark = pytest.mark.usefixtures("one_thread")
DIGITS = ["--dataset", "digits", "--batch-size", "64", "--memory-format", "contiguous", "--eval-batch-size", "256"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A digits warmup trained on shard 0/2 (its card records the shard)."""
    out = tmp_path_factory.mktemp("warm") / "ckpt"
    run_cli("pretrain", *DIGITS, "--shard", "0/2", "--epochs", "1", "--out", out, "--quiet")
    return out


@pytest.fixture(scope="module")
def one_epoch(warm, tmp_path_factory):
    """A one-epoch fine-tune on the other shard, with its console output."""
    out = tmp_path_factory.mktemp("ft") / "run"
    result = run_cli("finetune", "--checkpoint", warm, *DIGITS, "--shard", "1/2", "--epochs", "1", "--out", out,
                     "--meter", "estimate")
    return out, result.output


# ---- 17: the CPU-time estimate ---------------------------------------------------------------

def test_the_estimate_never_exceeds_cores_times_watts_per_core(tmp_path):
    clock, cpu = FakeClock(), {"s": 10.0}
    meter = open_meter(["estimate"], root=tmp_path, nvml=FakeNvml(init_error=12), watts_per_core=6.0,
                       clock=clock, sleep=clock.sleep, cpu_seconds=lambda: cpu["s"])
    assert torch.get_num_threads() == 1           # cores in use: one torch thread
    meter.begin("epoch")
    clock.advance(0.01)
    cpu["s"] += 0.5               # this process's CPU time charged late (a coarse counter): 50 cores' worth
    meter.sample_once()
    clock.advance(1.0)
    cpu["s"] += 0.8               # 0.8 of a core busy
    fields = meter.end("epoch")
    assert fields["peak_power_w"] <= 1 * 6.0
    assert fields["energy_j"] == pytest.approx(6.0 * 0.01 + 0.8 * 6.0)
    assert fields["avg_power_w"] <= 1 * 6.0


def test_monitor_with_the_estimate_shows_the_whole_machine(monkeypatch):
    from edge_sel.energy import estimate
    from edge_sel.cli_monitor import monitor
    busy = {"s": 0.0}

    def machine():                 # every other process keeps one core busy
        busy["s"] += 0.05
        return busy["s"]
    monkeypatch.setattr(estimate, "machine_cpu_seconds", machine, raising=False)
    result = CliRunner().invoke(monitor, ["--meter", "estimate", "--samples", "2", "--interval", "0.05",
                                          "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert all(row["power_w"] > 0 for row in rows)
    table = CliRunner().invoke(monitor, ["--meter", "estimate", "--samples", "1", "--interval", "0.01"])
    assert "whole machine" in table.output


def test_machine_cpu_time_counts_this_process_too():
    from edge_sel.energy.estimate import machine_cpu_seconds
    before = machine_cpu_seconds()
    end = os.times().elapsed + 0.2
    while os.times().elapsed < end:
        pass
    assert machine_cpu_seconds() - before >= 0.1


def test_threads_sets_torch_threads_for_the_run_and_the_estimate_bound(warm, one_epoch, tmp_path, monkeypatch):
    import edge_sel.cli
    from edge_sel.energy.estimate import EstimateMeter, usable_cpus
    seen = []

    def finetune(*args, **kwargs):            # what the run would see, without running it again
        seen.append(torch.get_num_threads())
        return summary(one_epoch[0])
    monkeypatch.setattr(edge_sel.cli, "finetune", finetune)
    run_cli("finetune", "--checkpoint", warm, "--epochs", "1", "--out", tmp_path / "r", "--threads", "2", "--quiet")
    assert seen == [2] and torch.get_num_threads() == 1          # set for the command, restored after it
    torch.set_num_threads(2)
    try:
        cores = min(2, usable_cpus())
        assert f"at most {cores} core{'s' if cores > 1 else ''} (no sensor)" in EstimateMeter(6.0).detail
    finally:
        torch.set_num_threads(1)


# ---- 19, 20: report --out, file modes --------------------------------------------------------

def test_report_out_follows_the_overwrite_rule(one_epoch, tmp_path, capsys):
    run, _ = one_epoch
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    code, err = run_main(["report", run, "--out", out], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"edge-sel: error: --out {out}: already exists and is not empty; pass --overwrite to replace it"]
    # --overwrite replaces an earlier report only, recognised by its marker: not a folder of the user's.
    code, err = run_main(["report", run, "--out", out, "--overwrite"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"edge-sel: error: --out {out}: not an earlier output of edge-sel report (it holds no .edge-sel-output "
        f"file); --overwrite replaces only that: remove it yourself or choose another --out"]
    assert (out / "stale.png").read_bytes() == b"old"
    (out / "stale.png").unlink()
    run_cli("report", run, "--out", out)
    (out / "stale.png").write_bytes(b"old")
    run_cli("report", run, "--out", out, "--overwrite")
    assert not (out / "stale.png").exists() and (out / "report.html").is_file()
    code, err = run_main(["report", run, "--out", run.parent, "--overwrite"], capsys)
    assert code == 2 and f"holds RUN {run}" in err and (run / "metrics.jsonl").is_file()


def test_model_weights_follow_the_umask(tmp_path):
    from edge_sel.core.checkpoint import ModelCard, save_checkpoint
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt", torch.nn.Linear(2, 2), ModelCard("x", 2, ["a", "b"], [1, 1, 2], [0], [1]))
    finally:
        os.umask(old)
    for name in ("model.safetensors", "model.json"):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o644, name


# ---- 21: degenerate data ---------------------------------------------------------------------

def test_pretrain_refuses_one_class(tmp_path, capsys):
    for split in ("train", "test"):
        folder = tmp_path / "one" / split / "cat"
        folder.mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(folder / f"{i}.png")
    code, err = run_main(["pretrain", "--dataset", f"folder:{tmp_path / 'one'}", "--epochs", "1",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"edge-sel: error: --dataset folder:{tmp_path / 'one'}: the training data holds one class (cat); a "
        "classifier needs samples of at least two classes"]
    assert not (tmp_path / "run").exists()


def test_a_subset_smaller_than_the_classes_is_refused(tmp_path, capsys):
    code, err = run_main(["pretrain", "--dataset", "digits", "--subset", "3", "--epochs", "1",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("edge-sel: error: --subset 3: fewer samples than the 10 classes")


def test_fine_tuning_on_the_warmups_own_samples_warns_in_one_line(warm, tmp_path, capsys):
    with warnings.catch_warnings():
        # Printed to stderr as the command prints it, not recorded by pytest.
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        warnings.simplefilter("always")
        code, err = run_main(["finetune", "--checkpoint", warm, *DIGITS, "--epochs", "0", "--out", tmp_path / "a",
                              "--quiet"], capsys)
    assert code == 0
    lines = [line for line in err.splitlines() if "warmup's training data" in line]
    assert len(lines) == 1 and lines[0].startswith("edge-sel: warning: ")
    assert re.search(r"\d+ of \d+ fine-tuning samples were in the warmup's training data .*shard 0/2.*"
                     r"--shard 1/2", lines[0])
    assert "warnings.warn" not in err and "Warning:" not in err     # no Python source line, no category
    code, err = run_main(["finetune", "--checkpoint", warm, *DIGITS, "--shard", "1/2", "--epochs", "0",
                          "--out", tmp_path / "b", "--quiet"], capsys)
    assert code == 0 and "warmup's training data" not in err
    run_cli("pretrain", *DIGITS, "--shard", "0/2", "--epochs", "0", "--out", tmp_path / "fresh", "--quiet")
    code, err = run_main(["finetune", "--checkpoint", tmp_path / "fresh", *DIGITS, "--epochs", "0",
                          "--out", tmp_path / "c", "--quiet"], capsys)
    assert code == 0 and "warmup's training data" not in err         # a fresh initialisation trained nothing


# ---- 22: ORT artifacts with default options -------------------------------------------------

def test_default_export_then_ort_finetune_takes_the_artifacts_optimizer(warm, tmp_path):
    pytest.importorskip("onnxruntime.training.api")
    art = tmp_path / "art"
    run_cli("export", "--checkpoint", warm, "--out", art, "--scheme", "full", "--quiet")
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", warm, *DIGITS, "--shard", "1/2", "--subset", "64", "--epochs", "1",
            "--backend", "ort", "--artifacts", art, "--out", out, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["momentum"], config["weight_decay"]) == ("sgd", 0.0, 0.0)
    # A typed option still has to agree with the artifacts.
    run_cli("finetune", "--checkpoint", warm, *DIGITS, "--shard", "1/2", "--epochs", "1", "--backend", "ort",
            "--artifacts", art, "--momentum", "0.9", "--out", tmp_path / "bad", expect=2)


# ---- 23: the smaller ones --------------------------------------------------------------------

def test_checkpoint_given_as_a_file_names_its_directory(warm, tmp_path, capsys):
    weights = warm / "model.safetensors"
    code, err = run_main(["finetune", "--checkpoint", weights, "--epochs", "1", "--out", tmp_path / "r"], capsys)
    assert code == 2 and err.strip() == (f"edge-sel: error: --checkpoint {weights}: is a file, not a directory; "
                                         f"give its directory ({warm})")


def test_a_near_miss_profile_name_gets_a_suggestion(capsys):
    code, err = run_main(["profiles", "show", "jetson-orin-nan"], capsys)
    assert code == 2 and "did you mean jetson-orin-nano?" in err
    code, err = run_main(["profiles", "show", "laptop"], capsys)
    assert "did you mean laptop-cpu?" in err


def test_sparsity_help_lists_every_mode_the_parser_accepts():
    from edge_sel.methods.registry import UPDATERS
    text = " ".join(run_cli("finetune", "--help").output.split())
    section = text[text.index("--sparsity"):text.index("--guilt-percentile")]
    assert all(re.search(rf"\b{re.escape(mode)}\b", section) for mode in UPDATERS), section


def test_bench_adapt_help_and_joules_column():
    from edge_sel.bench.adapt import joules
    text = " ".join(run_cli("bench", "adapt", "--help").output.split())
    assert "2 seeds" in text[text.index("--quick"):]
    assert [joules(v) for v in (0.4, 1.26, 12.34, 512.6, None)] == ["0.4", "1.26", "12.3", "513", "-"]


def test_one_epoch_is_singular_and_the_flops_split_adds_up(one_epoch):
    out, output = one_epoch
    assert ", 1 epoch, output model's test acc" in output and "1 epochs" not in output
    line = next(line for line in output.splitlines() if line.startswith("counted training FLOPs"))
    total, *parts = (float(x) for x in re.findall(r"(\d+\.\d+) G", line))
    assert total == pytest.approx(sum(parts), abs=0.011)


def test_flops_split_names_scoring_and_calibration():
    from edge_sel.report.summary import flops_split
    text = flops_split({"flops_train": 12e9, "flops_forward": 3e9, "flops_backward": 6e9, "flops_scoring": 2e9,
                        "flops_calibration": 1e9, "rolled_back_flops": 0})
    assert text == "12.00 G = forward 3.00 G + backward 6.00 G + scoring 2.00 G + calibration 1.00 G"


def test_a_full_disk_before_any_checkpoint_does_not_claim_one(tmp_path, monkeypatch):
    from edge_sel.core import temp_file
    from edge_sel.engine.loop import state as state_mod

    def full(path, mode="r", *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(temp_file, "open", full, raising=False)      # where the state's file is made
    with pytest.raises(state_mod.StateWriteError) as info:
        state_mod.save_state(tmp_path / "state", {"step": 1})
    assert "no earlier checkpoint of this run exists" in str(info.value)
    assert "intact" not in str(info.value)


def test_shipped_profiles_default_to_the_honest_gate():
    from edge_sel.profiles import list_profiles, load_profile
    strategies = {name: load_profile(name).strategy for name in list_profiles()}
    assert "sundew" not in strategies.values()
    assert strategies["laptop-cpu"] == "random"


# ---- 24: the report's figures ----------------------------------------------------------------

def test_class_panels_count_epochs_from_zero_and_say_when_nothing_trained(warm, one_epoch, tmp_path):
    from edge_sel.report.plots import START_X, per_class_figure
    from edge_sel.report.runs import load_run
    trained = per_class_figure(load_run(one_epoch[0]))
    ax_a, ax_e = trained.axes[:2]
    assert [list(line.get_xdata()) for line in ax_a.get_lines()][0] == [START_X, 0]     # start, then epoch 0
    assert [list(line.get_xdata()) for line in ax_e.get_lines()][0] == [0]
    trained.canvas.draw()
    lo, hi = ax_a.get_xlim()
    ticks = [t.get_text() for t in ax_a.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert ticks == ["start", "0"]                 # whole epochs only, no 2.84 .. 3.16
    run_cli("finetune", "--checkpoint", warm, *DIGITS, "--shard", "1/2", "--epochs", "0", "--out", tmp_path / "r0",
            "--quiet")
    untrained = per_class_figure(load_run(tmp_path / "r0"))
    texts = [t.get_text() for t in untrained.axes[1].texts]
    assert any("no epoch was trained" in t for t in texts)


def test_gate_plot_title_matches_what_is_drawn(tmp_path, monkeypatch):
    from edge_sel.report import plots
    from edge_sel.report.runs import RunData
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    taus = [1.04, 1.01, 0.94]          # as a sundew run recorded them: above its largest significance
    run = RunData("sundew", [{"activation": 0.3, "threshold_mean": t, "threshold_min": t - 0.01,
                              "threshold_max": t + 0.01} for t in taus])
    plots.gating([run], tmp_path / "gating.png")
    ax_t = drawn[0].axes[1]
    title = ax_t.get_title()
    assert "significance in [0, 1])" not in title and "tau may pass" in title
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax_t.get_lines())     # the dotted 1
    assert list(ax_t.get_lines()[0].get_xdata()) == [0, 1, 2]
    # The two panels' titles side by side do not run into each other.
    drawn[0].canvas.draw()
    renderer = drawn[0].canvas.get_renderer()
    left, right = (ax.title.get_window_extent(renderer) for ax in drawn[0].axes[:2])
    assert left.x1 < right.x0, (left, right)


def test_a_class_line_joins_only_epochs_that_ran_the_test_set():
    from edge_sel.report.plots import START_X, per_class_figure
    from edge_sel.report.runs import RunData
    epochs = [{"epoch": i, "acc_0": None, "E_0": 0.5} for i in range(3)]
    epochs[-1]["acc_0"] = 0.9
    run = RunData("r", epochs, baseline={"phase": "baseline", "acc_0": 0.4})
    xs, ys = (list(v) for v in per_class_figure(run).axes[0].get_lines()[0].get_data())
    assert (xs[0], ys[0], xs[-1], ys[-1]) == (START_X, 40, 2, 90)
    # A segment joins two measured points only where they are adjacent epochs: none from the start
    # across epochs 0 and 1, which ran no test.
    segments = [(a, b) for a, b, ya, yb in zip(xs, xs[1:], ys, ys[1:]) if not (np.isnan(ya) or np.isnan(yb))]
    assert segments == []


def test_shift_contact_sheet_is_large_and_labelled_for_digits(tmp_path):
    out = tmp_path / "shifted"
    run_cli("shift", "--dataset", "digits", "--shift", "corrupt=brightness:2", "--limit", "1", "--split", "test",
            "--out", out)
    sheet = Image.open(out / "contact_sheet.png").convert("L")
    assert sheet.width >= 5 * 4 * 48 and sheet.height >= 11 * 48
    margin = np.asarray(sheet)[:, :40]
    assert (margin < 128).any()          # the row names are drawn in the left margin
