"""`edge-sel bench lifelong --quick`: a device's life on digits, and the consistency of what it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sel.bench import lifelong
from edge_sel.engine.night import journal
from edge_sel.errors import InputError
from helpers import run_cli, synthetic_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("lifelong") / "bench"
    # The quick default also plays "lifelong"; the suite leaves it out to stay small (tests/test_levers.py
    # covers the levers themselves).
    run_cli("bench", "lifelong", "--quick", "--quiet", "--methods", "none,bn,conditions,dense,recipe", "--out", out)
    return out, json.loads((out / "results.json").read_text())


def test_forgetting_is_the_best_accuracy_so_far_minus_the_current(bench):
    _, results = bench
    for name, lives in results["lives"].items():
        for life in lives:
            nights = life["nights"]
            assert [n["night"] for n in nights] == list(range(len(results["schedule"]) + 1))
            for i in range(1, len(nights)):
                for d, acc in nights[i]["acc"].items():
                    best = max(n["acc"][d] for n in nights[: i + 1])
                    assert nights[i]["forgetting"][d] == pytest.approx(100 * (best - acc)), (name, i, d)
                mean = sum(nights[i]["acc"][d] for d in results["domains"]) / len(results["domains"])
                assert nights[i]["average"] == pytest.approx(mean)
    # A night that promoted nothing leaves the deployed model, and so every accuracy, as it was.
    for life in results["lives"]["none"]:
        assert all(n["acc"] == results["start"] for n in life["nights"])


def test_totals_are_the_sums_of_the_nights_and_the_summary_their_mean(bench):
    _, results = bench
    for name, lives in results["lives"].items():
        for life in lives:
            nights = life["nights"][1:]
            for key in ("flops_train", "flops_all", "flops_eval"):
                assert life["totals"][key] == sum(n[key] for n in nights)
            metered = [n["energy_j"] for n in nights if n["energy_j"] is not None]
            assert life["totals"]["energy_j"] == pytest.approx(sum(metered) if metered else None)
            for n in nights:        # all in: training plus every evaluation the device ran
                assert n["flops_all"] >= n["flops_train"] + n["flops_eval"] - 1
        mean = sum(life["totals"]["flops_train"] for life in lives) / len(lives)
        assert results["summary"][name]["totals"]["flops_train"] == pytest.approx(mean)
        final = sum(100 * life["nights"][-1]["acc"]["server"] for life in lives) / len(lives)
        assert results["summary"][name]["final"]["acc"]["server"] == pytest.approx(final)


def test_the_methods_cost_in_the_expected_order(bench):
    _, results = bench
    flops = {name: s["totals"]["flops_train"] for name, s in results["summary"].items()}
    assert flops["none"] == 0 < flops["bn"] < flops["recipe"] < flops["dense"]
    assert results["summary"]["none"]["totals"]["energy_j"] == 0
    assert results["aims"]["dense"]["flops_ratio"] == pytest.approx(1.0)
    assert results["aims"]["recipe"]["flops_ratio"] == pytest.approx(flops["recipe"] / flops["dense"])


def test_statistics_per_condition_adapt_without_forgetting(bench):
    """The low-contrast night is a condition of its own: the deployed model serves it and the clean
    digits, with no training (its re-estimations are evaluation FLOPs, in the all-in total)."""
    _, results = bench
    final = {name: s["final"]["acc"] for name, s in results["summary"].items()}
    assert final["conditions"]["contrast:4"] > final["none"]["contrast:4"] + 30
    assert final["conditions"]["server"] > 100 * results["start"]["server"] - 1.5
    assert final["conditions"]["contrast:4"] > final["bn"]["contrast:4"] - 5
    totals = results["summary"]["conditions"]["totals"]
    assert totals["flops_train"] == 0 < totals["flops_all"]
    assert results["aims"]["conditions"]["flops_all_ratio"] == pytest.approx(
        totals["flops_all"] / results["summary"]["dense"]["totals"]["flops_all"])


def test_the_deployed_model_is_also_measured_as_a_camera_asks_it(bench):
    """Beside whole batches, every deployed model predicts the domains' images as a stream, one frame
    a call: a model without a bank gives the same figures either way (BatchNorm in eval mode treats
    each image alone), the bank's model stays within a few points of its whole batches on every
    domain, and the table shows both."""
    out, results = bench
    final = {name: s["final"] for name, s in results["summary"].items()}
    for domain, acc in final["none"]["acc_frames"].items():
        assert acc == pytest.approx(final["none"]["acc"][domain], abs=1e-9)
    for domain, acc in final["conditions"]["acc_frames"].items():
        assert abs(acc - final["conditions"]["acc"][domain]) <= 3
    assert "as a device asks it" in (out / "table.md").read_text()


def test_single_night_references_and_paired_differences(bench):
    _, results = bench
    refs = results["references"]
    assert list(refs) == [d for d in results["domains"] if d != "clean"] == ["contrast:4"]
    ref = refs["contrast:4"]
    # The bar is adaptation itself: the references run with the guard off, from the warmup.
    assert ref["max_forgetting"] == 100 and all(r["flops_train"] > 0 for r in ref["methods"]["dense"])
    best = [max(ref["methods"][m][k]["acc"] for m in ref["methods"]) for k in range(2)]
    assert list(ref["best_per_seed"].values()) == pytest.approx(best)
    gap = results["aims"]["recipe"]["domain_gaps"]["contrast:4"]
    assert gap == pytest.approx(results["summary"]["recipe"]["final"]["acc"]["contrast:4"] - 100 * sum(best) / 2)
    pairs = {(p["a"], p["b"]): p for p in results["comparisons"]}
    recipe = pairs[("recipe", "dense")]
    per_seed = [100 * (r["nights"][-1]["average"] - d["nights"][-1]["average"])
                for r, d in zip(results["lives"]["recipe"], results["lives"]["dense"])]
    assert recipe["per_seed"] == pytest.approx(per_seed) and recipe["n"] == 2


def test_outputs_round_trip_and_the_figure_is_a_png(bench):
    out, results = bench
    assert json.loads(json.dumps(results)) == results
    assert (out / "lifelong.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    final = results["summary"]["dense"]["final"]
    row = f"| dense | {final['acc']['clean']:.1f} | {final['acc']['contrast:4']:.1f} | {final['average']:.1f} |"
    assert row in table
    assert "Aims" in table and "not a measurement" in table
    # Every night ran the nightly path: a run directory with its summary, judged by promote.
    run = results["lives"]["dense"][0]["nights"][1]["run"]
    assert journal.last_decision(out / "homes" / "dense" / "seed0" / "runs" / run.rsplit("/", 1)[1])["rule"] == \
        results["lives"]["dense"][0]["nights"][1]["rule"]


def test_conditions_and_schedule_are_checked():
    conditions = lifelong.parse_conditions(("rain=corrupt=gaussian_blur:2",), lifelong.CONDITIONS)
    assert conditions["rain"] == "corrupt=gaussian_blur:2"
    assert lifelong.parse_schedule("day,rain", conditions, lifelong.SCHEDULE) == ["day", "rain"]
    assert lifelong.domains(["day", "rain", "night", "few"], conditions) == ["clean", "gaussian_blur:2",
                                                                           "gaussian_noise:3"]
    for bad in (("rain",), ("rain=corrupt=mist:2",)):
        with pytest.raises(InputError, match="--shift"):
            lifelong.parse_conditions(bad, lifelong.CONDITIONS)
    with pytest.raises(InputError, match="--schedule: unknown condition rain"):
        lifelong.parse_schedule("day,rain", lifelong.CONDITIONS, lifelong.SCHEDULE)


def test_a_bad_schedule_is_one_line_and_exit_2(tmp_path):
    result = run_cli("bench", "lifelong", "--quick", "--schedule", "day,moon", "--out", tmp_path / "b", expect=2)
    assert "--schedule" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_methods_that_score_alike_do_not_hide_one_another(tmp_path, monkeypatch):
    """Two methods with the same accuracy every night draw two lines apart, each its own marker."""
    from edge_sel.bench import lifelong_report
    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda fig, *a, **k: figures.append(fig))
    nights = [{"condition": c, "acc": {"clean": 90.0, lifelong.SERVER: 95.0}} for c in ("clean", "fog")]
    summary = {"lifelong": {"nights": nights}, "conditions": {"nights": nights}}
    lifelong_report.plot({"domains": ["clean"]}, summary, tmp_path / "lifelong.png")
    lines = figures[0].axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["lifelong", "conditions"]
    assert list(lines[0].get_xdata()) != list(lines[1].get_xdata())
    assert lines[0].get_marker() != lines[1].get_marker()


def test_a_warmup_at_another_size_than_the_folder_lives_at_its_own(tiny_warm, tmp_path, monkeypatch):
    """A 16 px warmup on a 12 px image folder: every night fine-tunes, and the bench evaluates every
    domain and the stream, at the checkpoint's size; another --image-size is refused before any image
    is decoded."""
    from edge_sel.engine.runs.data_options import DataOptions
    images = synthetic_folder(tmp_path / "images")
    args = ["bench", "lifelong", "--checkpoint", tiny_warm, "--dataset", f"folder:{images}", "--schedule", "night",
            "--methods", "none,bn,conditions", "--epochs", "1", "--seeds", "1", "--subset", "8", "--test-subset", "8",
            "--predict-batch", "2", "--quiet"]
    run_cli(*args, "--out", tmp_path / "bench")
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert results["image_size"] == 16
    for name in ("bn", "conditions"):
        for night in results["lives"][name][0]["nights"][1:]:
            config = json.loads((Path(night["run"]) / "config.json").read_text())
            assert config["data"]["image_size"] == 16, (name, night["night"])
    assert set(results["summary"]["conditions"]["final"]["acc_frames"]) == {"clean", "gaussian_noise:3"}

    def never(*a, **k):
        raise AssertionError("the data were loaded")
    monkeypatch.setattr(DataOptions, "load", never)
    result = run_cli(*args, "--image-size", "24", "--out", tmp_path / "refused", expect=2)
    assert result.output == (f"edge-sel: error: --image-size 24: the checkpoint {tiny_warm} takes 16 px images; "
                             "pretrain at 24 px or leave it out\n")
    assert not (tmp_path / "refused").exists()


def test_a_stop_in_a_night_of_no_epoch_ends_the_bench_as_partial(tmp_path, monkeypatch):
    """SIGTERM while a forward-only night (`bn`) runs: before, the run took the signal, had no epoch that
    looked at it and ended whole, and the bench played on and read as whole. Now the run says it was
    asked to stop, the bench starts no other night, a seed cut short is in no mean, and it exits 143."""
    import os
    import signal

    from edge_sel.engine.runs import training
    real, sent = training.save_checkpoint, []

    def save(out, *args, **kwargs):         # inside the run, after its last (here: no) step
        if "night01" in str(out) and "/bn/" in str(out) and not sent:
            sent.append(out)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(out, *args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", save)
    out = tmp_path / "bench"
    run_cli("bench", "lifelong", "--quick", "--quiet", "--methods", "none,bn,dense", "--out", out, expect=143)
    result = json.loads((out / "results.json").read_text())
    assert result["stopped"]["signal"] == "SIGTERM" and result["stopped"]["runs"] == []    # the night is whole
    night = json.loads((Path(sent[0]) / "summary.json").read_text())
    assert night["late_stop_signal"] == "SIGTERM" and night["stop_reason"] != "interrupted"
    assert all(lives == [] for lives in result["lives"].values()) and result["references"] == {}
    homes = out / "homes"
    assert not list(homes.glob("*/seed1")) and not list(homes.glob("*/seed0/runs/night02*"))
    assert not list((homes / "dense" / "seed0" / "runs").glob("night01*"))     # after bn on night 1
    assert "Partial: stopped by SIGTERM" in (out / "table.md").read_text()
    assert not any(a["domains_ok"] for a in result["aims"].values())
