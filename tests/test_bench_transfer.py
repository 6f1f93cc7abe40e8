"""`edge-sel bench transfer`: the start evaluated once per seed, each method's row, the paired
differences, and the sparse update's set as its run trained it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge_sel.core.records import read_records
from edge_sel.core.source_memory import read_source_memory
from edge_sel.methods.update.fixed_sets import bias_norm_names, sparse_names
from edge_sel.models import load_checkpoint
from helpers import digits_warmup_with_memory, run_cli, run_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    warm = digits_warmup_with_memory(root / "warm")
    run_cli("bench", "transfer", "--checkpoint", warm, "--dataset", "digits", "--methods",
            "sparse,adabn,classifier/per-condition,adabn/per-condition,sundew@0.4,random@0.4",
            "--seeds", "1", "--epochs", "1", "--subset", "200", "--test-subset", "100", "--val-subset", "50",
            "--one-process", "--threads", "1", "--quiet", "--out", root / "bench")
    return warm, root / "bench"


def test_rows_pairs_and_one_start_evaluation_per_seed(bench):
    warm, out = bench
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["start", "full FT", "full FT/frozen", "sparse", "adabn", "classifier/per-condition",
                          "adabn/per-condition", "sundew@0.4", "random@0.4"]
    table = (out / "table.md").read_text()
    assert all(f"\n| {name} | {r['bn_stats'] or '-'} | " in table for name, r in rows.items())
    assert "TinyTL-B (biases)" in table
    # One seed: no interval, said in words (not [+nan, +nan]); a planned row's budget and plan in the table.
    assert "nan" not in table and "| n/a (1 seed) |" in table
    assert f"| {rows['sparse']['budget_mb']:.1f} ({rows['sparse']['trained_tensors']} tensors" in table
    # The start is evaluated once per seed, by its own run; no method evaluates it again.
    runs = {name: Path(rs[0]["run_dir"]) for name, rs in result["results"].items()}
    baselines = {name: sum(r.get("phase") == "baseline" for r in read_records(d / "metrics.jsonl"))
                 for name, d in runs.items()}
    # AdaBN trains nothing: its one record is its start's, the statistics re-estimated first.
    assert baselines == {"start": 1, "full FT": 0, "full FT/frozen": 0, "sparse": 0, "adabn": 1,
                         "classifier/per-condition": 0, "adabn/per-condition": 1, "sundew@0.4": 0, "random@0.4": 0}
    start = result["results"]["start"][0]
    for name in ("full FT", "sparse", "sundew@0.4", "random@0.4"):
        r = result["results"][name][0]
        assert r["forgetting_pts"] == pytest.approx(100 * (start["clean_test_acc"] - r["clean_test_acc"]))
    # Paired by seed: Sundew against random at the same activation, and against full fine-tuning.
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert set(pairs) == {("sundew@0.4", "random@0.4"), ("sundew@0.4", "full FT"),
                          ("classifier/per-condition", "adabn"), ("adabn/per-condition", "adabn"),
                          ("adabn/per-condition", "classifier/per-condition")}
    acc = {name: rs[0]["test_acc"] for name, rs in result["results"].items()}
    assert pairs[("sundew@0.4", "random@0.4")]["per_seed"] == pytest.approx([100 * (acc["sundew@0.4"] - acc["random@0.4"])])
    # Against the better of the two full fine-tuning rows, and against the best row; every row says its recipe.
    assert result["reference"] == max(("full FT", "full FT/frozen"), key=acc.get)
    assert result["best"] == max((n for n in acc if n != "start"), key=acc.get)
    assert rows["sparse"]["vs_full"]["diff_pts"] == pytest.approx(100 * (acc["sparse"] - acc[result["reference"]]))
    assert rows["sparse"]["vs_best"]["diff_pts"] == pytest.approx(100 * (acc["sparse"] - acc[result["best"]]))
    assert rows["sundew@0.4"]["recipe"] == "lr 0.01 (the bench's)"
    assert (out / "accuracy-memory.png").stat().st_size > 1000 and (out / "accuracy-joules.png").stat().st_size > 1000
    assert 'src="accuracy-joules.png"' in (out / "report.html").read_text()


def test_every_row_runs_and_states_its_statistics_mode(bench):
    """The field's sets run with frozen statistics (byte for byte the start's afterwards), AdaBN
    re-estimates them with no training, the classifier keeps a bank per condition; each run's
    records and summary say the mode its row names."""
    warm, out = bench
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r["bn_stats"] for r in result["rows"]}
    assert rows == {"start": None, "full FT": "reestimate", "full FT/frozen": "frozen", "sparse": "frozen", "adabn": "reestimate",
                    "classifier/per-condition": "per-condition", "adabn/per-condition": "per-condition",
                    "sundew@0.4": "reestimate", "random@0.4": "reestimate"}
    runs = {name: Path(rs[0]["run_dir"]) for name, rs in result["results"].items() if name != "start"}
    for name, run in runs.items():
        said = {r["bn_stats"] for r in read_records(run / "metrics.jsonl")}
        assert said == {rows[name]} and json.loads((run / "summary.json").read_text())["bn_stats"] == rows[name]
    # A row whose runs choose their statistics (the default's) names what they chose.
    from edge_sel.bench.transfer_report import statistics_of
    assert statistics_of({"bn_stats": None, "sparsity": "auto"}, [{"bn_stats": "frozen"}] * 2) == "frozen (its choice)"

    def statistics(directory):
        model, _ = load_checkpoint(directory)
        return {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in
                ("running_mean", "running_var", "num_batches_tracked")}
    start, frozen, adabn = statistics(warm), statistics(runs["sparse"]), statistics(runs["adabn"])
    assert start and all(frozen[k].numpy().tobytes() == v.numpy().tobytes() for k, v in start.items())
    assert any(not torch.equal(adabn[k], v) for k, v in start.items())
    assert (runs["classifier/per-condition"] / "bn_bank.safetensors").exists()
    # AdaBN per condition trains nothing and keeps the source's statistics; it adapts by its bank alone,
    # whose passes (charged to evaluation by the run) are the row's FLOPs, as they are beside training's.
    model, kept = load_checkpoint(warm)[0].state_dict(), load_checkpoint(runs["adabn/per-condition"])[0].state_dict()
    assert all(kept[k].numpy().tobytes() == v.numpy().tobytes() for k, v in model.items())
    assert (runs["adabn/per-condition"] / "bn_bank.safetensors").exists()
    for name in ("adabn/per-condition", "classifier/per-condition"):
        totals = json.loads((runs[name] / "summary.json").read_text())["totals"]
        r = result["results"][name][0]
        assert totals["flops_bn_bank"] > 0 and r["flops_train"] == (totals["flops_train"] or 0) + totals["flops_bn_bank"]
        assert r["energy_j"] is None or r["energy_j"] > (totals["energy_j"] or 0)


def test_the_sparse_update_trains_the_chosen_set(bench):
    warm, out = bench
    result = json.loads((out / "results.json").read_text())
    model, card = load_checkpoint(warm)
    fisher = read_source_memory(warm, card.input_shape, card.source_memory).fisher
    chosen = sparse_names(model, {n: float(f.sum()) for n, f in fisher.items()}, 0.1)
    run = Path(result["results"]["sparse"][0]["run_dir"])
    plan = json.loads((run / "config.json").read_text())["memory_plan"]
    assert set(plan["trainable"]) == chosen and bias_norm_names(model) < chosen
    weights = sum(p.numel() for n, p in model.named_parameters() if n in chosen - bias_norm_names(model))
    assert 0 < weights <= 0.1 * sum(p.numel() for p in model.parameters())
    assert 0 < result["results"]["sparse"][0]["counted_peak_mb"] < result["full_ft_counted_mb"]


@pytest.mark.parametrize("option, said", [(("--methods", "fullft"), "--methods: unknown fullft"),
                                           (("--from-imagenet", "edgecnn"), "--from-imagenet: the model 'edgecnn'")])
def test_a_bad_option_is_one_line(bench, tmp_path, capsys, option, said):
    warm, _ = bench
    start = ["--checkpoint", warm] if option[0] != "--from-imagenet" else []
    code, err = run_main(["bench", "transfer", *start, "--dataset", "digits", *option, "--out", tmp_path / "b"], capsys)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


def test_benches_of_other_seeds_merge_into_one(bench, tmp_path, monkeypatch):
    """benchmarks/merge_bench_transfer.py: a bench of another seed pairs with this one's (the paired
    differences then over two seeds); a seed in two benches, or other settings, are refused. A run that
    refused its budget in one of them stays named, and its row's means and differences are over the
    seed it ran."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from merge_bench_transfer import merge
    _, out = bench
    first = json.loads((out / "results.json").read_text())
    second = json.loads(json.dumps(first))
    for rows in second["results"].values():
        for r in rows:
            r["seed"], r["test_acc"] = 1, r["test_acc"] - 0.01 * (r is rows[0])
    reason = "--memory-budget 4.2: the process grew 9.0 MiB before the first step: the smallest budget that holds " \
             "this plan is about 12.5 MiB"
    second["results"]["sparse"] = []
    second["refused"] = {"sparse": [{"seed": 1, "budget_mb": 4.2, "needs_mb": 12.5, "reason": reason, "run_dir": "-"}]}
    # Each bench chose its best fixed set at 1/4 by its own seeds: where they differ, no set ran on every
    # seed, so its rows are left out and no planner difference is stated.
    first["best_fixed"] = {"1/4": {"budget_mb": 4.2, "fitting": ["classifier", "last-k"], "method": "classifier"}}
    second["best_fixed"] = {"1/4": {"budget_mb": 4.2, "fitting": ["classifier", "last-k"], "method": "last-k"}}
    first["results"]["best fixed@1/4"] = [dict(first["results"]["adabn"][0])]
    second["results"]["best fixed@1/4"] = [dict(second["results"]["adabn"][0])]
    split = merge([first, second])
    assert "best fixed@1/4" not in split["results"] and split["best_fixed"]["1/4"]["split"] == ["classifier", "last-k"]
    from edge_sel.bench.transfer_report import write_outputs
    (tmp_path / "split").mkdir()
    write_outputs(split, tmp_path / "split")
    assert "| differs between the benches merged (classifier, last-k) | - | - |" in (tmp_path / "split" / "table.md").read_text()
    second["best_fixed"]["1/4"]["method"] = "classifier"
    assert len(merge([first, second])["results"]["best fixed@1/4"]) == 2
    for b in (first, second):
        del b["best_fixed"], b["results"]["best fixed@1/4"]
    merged = merge([first, second])
    assert merged["refused"] == second["refused"]
    assert merged["seeds"] == [0, 1] and merged["merged_from"] == 2
    with pytest.raises(SystemExit, match="a seed is in more than one bench"):
        merge([first, first])
    with pytest.raises(SystemExit, match="differ in epochs"):
        merge([first, {**second, "epochs": first["epochs"] + 1}])
    from edge_sel.bench.transfer_report import write_outputs
    write_outputs(merged, tmp_path)
    pairs = {(p["a"], p["b"]): p for p in merged["pairs"]}
    assert len(pairs[("sundew@0.4", "random@0.4")]["per_seed"]) == 2
    table = (tmp_path / "table.md").read_text()
    assert "Merged from 2 benches" in table
    sparse = {r["method"]: r for r in merged["rows"]}["sparse"]
    assert sparse["vs_full"]["n"] == 1 and sparse["test_acc"] == first["results"]["sparse"][0]["test_acc"]
    assert "\n| sparse (1 of 2 seeds; 1 refused its budget) | frozen | " in table
    assert f"- sparse seed 1 under 4.2 MiB, needs 12.5 MiB: {reason}\n" in table



def test_a_stopped_bench_names_its_stopped_run_and_exits_128_plus_the_signal(bench, tmp_path, monkeypatch):
    """A SIGTERM at the end of full FT's first epoch of two (injected: the run's own stop signal at
    its 7th step, the epoch's last of 200 images in batches of 32): the run stops after 1 epoch with
    its test pass, which made an ordinary row before. It is named as stopped, is in no mean or paired
    difference, the classifier never starts, and the bench exits 143 with results.json partial."""
    warm, _ = bench
    monkeypatch.setenv("EDGE_SEL_FAULT_SIGNAL_AT", "step-7:SIGTERM")
    out = tmp_path / "stopped"
    result = run_cli("bench", "transfer", "--checkpoint", warm, "--dataset", "digits", "--scenario", "clean",
                     "--methods", "classifier", "--seeds", "1", "--epochs", "2", "--subset", "200", "--test-subset",
                     "50", "--val-subset", "50", "--one-process", "--quiet", "--out", out, expect=143)
    bench_json = json.loads((out / "results.json").read_text())
    assert bench_json["partial"] is True and bench_json["stopped"]["signal"] == "SIGTERM"
    [stopped] = bench_json["stopped"]["runs"]
    assert (stopped["method"], stopped["seed"], stopped["epochs_run"], stopped["epochs_planned"]) == ("full FT", 0, 1, 2)
    assert bench_json["results"]["full FT"] == [] and bench_json["pairs"] == []
    assert not (out / "runs" / "classifier").exists()
    assert "stopped early, left out of every mean and paired difference: full FT seed 0 (1 of 2 epochs)" in \
        (out / "table.md").read_text()
    assert "stopped by SIGTERM" in result.output


# Batch 256: the planner at 1/4 of full FT's counted peak (4.0 MiB) fits by the bench's count on digits.
PLANNED = ("--dataset", "digits", "--scenario", "clean", "--seeds", "1", "--batch-size", "256", "--subset", "200",
           "--test-subset", "50", "--val-subset", "50", "--one-process", "--quiet")


def test_a_run_that_refuses_its_budget_is_a_row_that_does_not_fit_and_the_bench_goes_on(bench, tmp_path, monkeypatch):
    """The bench's count says planner@1/4 fits its 4.0 MiB; its run also counts what the process grew by
    before the first step (given here: 500 MiB) and refuses. That refusal ended the whole bench (exit 2,
    no results); now it is that seed's row, marked as not fitting with the run's own line and the
    smallest budget it names, in no mean or paired difference, and the bench ends as usual."""
    warm, _ = bench
    monkeypatch.setenv("EDGE_SEL_PROCESS_GROWTH_MB", "500")
    out = tmp_path / "refused"
    run_cli("bench", "transfer", "--checkpoint", warm, *PLANNED, "--methods", "planner@1/4", "--epochs", "1", "--out", out)
    result = json.loads((out / "results.json").read_text())
    assert result["fits"]["planner@1/4"]["fits"] is True and not result.get("partial")
    [refused] = result["refused"]["planner@1/4"]
    assert refused["seed"] == 0 and refused["reason"].startswith(f"--memory-budget {result['budgets_mb']['planner@1/4']:g}: ")
    assert refused["needs_mb"] > 500 and f"{refused['needs_mb']} MiB" in refused["reason"]
    assert result["results"]["planner@1/4"] == [] and len(result["results"]["full FT"]) == 1 and result["pairs"] == []
    row = {r["method"]: r for r in result["rows"]}["planner@1/4"]
    assert (row["fits"], row["needs_mb"], row["refused_seeds"]) == (False, refused["needs_mb"], [0])
    table = (out / "table.md").read_text()
    assert (f"| planner@1/4 | per the plan | its own choice; lr 0.01 (none shipped) | does not fit "
            f"{refused['budget_mb']:.1f} MiB (needs {refused['needs_mb']:.1f} MiB): the run refused its budget | - |") in table
    assert f"- planner@1/4 seed 0 under {refused['budget_mb']:.1f} MiB, needs {refused['needs_mb']:.1f} MiB: " \
           f"{refused['reason']}" in table


def test_a_signal_during_a_best_fixed_run_stops_the_bench_and_names_the_run(bench, tmp_path, monkeypatch):
    """The best fixed set under the planner's budget ran outside the bench's stop: a SIGTERM in it (here
    at its first step of two epochs) became an ordinary row of a run cut short, or ended the bench with
    no results.json marked partial. Now it stops as run_bench's runs do."""
    from edge_sel.bench import transfer_front
    warm, _ = bench
    monkeypatch.setenv("EDGE_SEL_PROCESS_GROWTH_MB", "0")
    best_fixed = transfer_front.run_best_fixed

    def signalled(*args, **kwargs):     # the signal in the best fixed set's runs only
        monkeypatch.setenv("EDGE_SEL_FAULT_SIGNAL_AT", "step-1:SIGTERM")
        return best_fixed(*args, **kwargs)
    monkeypatch.setattr(transfer_front, "run_best_fixed", signalled)
    out = tmp_path / "stopped"
    said = run_cli("bench", "transfer", "--checkpoint", warm, *PLANNED, "--methods", "classifier,planner@1/4",
                   "--epochs", "2", "--out", out, expect=143)
    result = json.loads((out / "results.json").read_text())
    assert result["partial"] is True and result["best_fixed"]["1/4"]["method"] == "classifier"
    [stopped] = result["stopped"]["runs"]
    assert (stopped["method"], stopped["seed"], stopped["epochs_run"], stopped["epochs_planned"]) == \
        ("best fixed@1/4", 0, 1, 2)
    # The best fixed set runs again in its row's statistics mode (the classifier's frozen), not the default.
    assert json.loads((Path(stopped["run_dir"]) / "config.json").read_text())["bn_stats"] == "frozen"
    assert result["results"]["best fixed@1/4"] == [] and len(result["results"]["planner@1/4"]) == 1
    assert "stopped early, left out of every mean and paired difference: best fixed@1/4 seed 0 (1 of 2 epochs)" in \
        (out / "table.md").read_text()
    assert "stopped by SIGTERM" in said.output


def test_a_best_fixed_run_that_refuses_its_budget_is_named_and_the_others_go_on(bench, tmp_path, monkeypatch):
    """The best fixed set run under the planner's budget refuses it as a planner run can: named with
    its line, not a row, and the next seed still runs; where every seed refused, the next most accurate
    set that fits runs instead (here every run refuses: the process grew 500 MiB)."""
    from edge_sel.bench.transfer import TransferSettings, chosen_methods, transfer_methods
    from edge_sel.bench.transfer_front import run_best_fixed
    from edge_sel.engine.runs.data_options import DataOptions
    warm, _ = bench
    monkeypatch.setenv("EDGE_SEL_PROCESS_GROWTH_MB", "500")
    s = TransferSettings(warm, DataOptions("digits", shard="1/2", subset=200, test_subset=50), "clean",
                         chosen_methods("classifier,bn+classifier,planner@1/4", transfer_methods()), [0, 1], 1, 0.01, 256, 50,
                         0.1, "cpu", tmp_path, own_process=False)
    ran = lambda acc: [{"seed": seed, "test_acc": acc, "clean_test_acc": acc} for seed in (0, 1)]
    state = run_best_fixed(s, {"results": {"start": ran(0.1), "classifier": ran(0.5), "bn+classifier": ran(0.6),
                                           "planner@1/4": ran(0.5)},
                               "budgets_mb": {"planner@1/4": 8.0}, "refused": {}}, log=lambda *_: None)
    best = state["best_fixed"]["1/4"]
    assert best["method"] is None and best["refused_sets"] == ["bn+classifier", "classifier"]
    assert state["results"]["best fixed@1/4"] == []
    for tried in ("bn+classifier", "classifier"):
        refused = state["refused"][f"best fixed@1/4 ({tried})"]
        assert [(r["seed"], r["budget_mb"]) for r in refused] == [(0, 8.0), (1, 8.0)]
        assert refused[0]["reason"].startswith("--memory-budget 8: ")
    assert state["stopped"] is None


def test_a_bench_fine_tune_killed_in_its_own_process_is_one_error_naming_its_run(bench, tmp_path, monkeypatch):
    """A row's process killed (out of memory, a signal) was a pool's traceback (BrokenProcessPool)."""
    from edge_sel.bench.bench_run import finetune_alone
    from edge_sel.config import TrainConfig
    from edge_sel.engine.runs.data_options import DataOptions
    from edge_sel.errors import RunKilled
    warm, _ = bench
    monkeypatch.setenv("EDGE_SEL_FAULT_KILL_AT_STEP", "1")        # the spawned child dies at its first step
    with pytest.raises(RunKilled, match=f"^{tmp_path / 'row'}: the bench's fine-tune was killed before it finished"):
        finetune_alone(warm, DataOptions("digits", shard="1/2", subset=64), TrainConfig(epochs=1, keep="last"),
                       tmp_path / "row")


def test_results_json_is_written_whole_or_left_as_it_was(tmp_path):
    """Issue [hardening], item 9: results.json is rewritten after every run; a write that fails
    midway (a file-size limit standing in for a full disk) left a torn file that the merge could not
    read. Now it is written to a temporary name and renamed: the earlier results.json stays whole."""
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    script = ("import resource, signal, sys\nfrom pathlib import Path\n"
              "from edge_sel.bench.outputs import write_bench_files\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
              "try:\n    write_bench_files(Path(sys.argv[1]), 'transfer', 'table', [], {'rows': ['x' * 100] * 100}, None,"
              " json_name='results.json')\nexcept OSError as e:\n    print('failed:', e.strerror)\n")
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert "failed: File too large" in done.stdout, done.stdout + done.stderr
    assert json.loads((out / "results.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "table.md"]      # no temporary file left


def test_the_merge_leaves_out_a_torn_results_json_in_one_line_and_claims_its_out(bench, tmp_path, monkeypatch, capsys):
    """Issue [hardening], item 9: a torn results.json made the merge a traceback; its --out took no
    claim (written into whatever was there, beside another writer)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from edge_sel.core import lock_file
    from merge_bench_transfer import main
    _, out = bench
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "results.json").write_text((out / "results.json").read_text()[:300])

    def merged(*argv):
        monkeypatch.setattr(sys, "argv", ["merge_bench_transfer.py", *map(str, argv)])
        try:
            code = main()
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err
    code, err = merged("--out", tmp_path / "merged", out, torn)
    assert code == 0 and err == f"merge_bench_transfer: {torn / 'results.json'}: cannot be read (JSONDecodeError): left out\n"
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["merged_from"] == 1
    code, err = merged("--out", tmp_path / "merged", out)
    assert "already exists and is not empty; pass --overwrite" in code and err == ""
    held = lock_file.acquire(str(tmp_path / ".merged.claim"), wait=False)
    try:
        code, _ = merged("--out", tmp_path / "merged", "--overwrite", out)
    finally:
        lock_file.release(str(tmp_path / ".merged.claim"), held)
    assert "another edge-sel command is writing it now" in code
    assert merged("--out", tmp_path / "merged", "--overwrite", out)[0] == 0


def test_the_benchs_own_start_ships_anchors_only_where_a_row_keeps_statistics_per_condition(tmp_path, monkeypatch,
                                                                                             capsys):
    from edge_sel.bench import transfer
    from edge_sel.errors import InputError
    shipped = []

    def start(model_name, data, config, out, **kwargs):         # the start's pretrain, stopped once seen
        shipped.append(config.anchors_per_class)
        raise InputError("start seen")

    monkeypatch.setattr(transfer, "pretrain", start)
    for methods in ("classifier,classifier/per-condition", "classifier,bn+classifier"):
        code, err = run_main(["bench", "transfer", "--from-imagenet", "efficientnet_lite0", "--dataset", "digits",
                              "--methods", methods, "--quiet", "--out", tmp_path / methods], capsys)
        assert code == 2 and "start seen" in err, err
    assert shipped == [transfer.START_ANCHORS, 0] and transfer.START_ANCHORS > 0
