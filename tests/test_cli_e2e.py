import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from helpers import SAME_CHOICES, records, run_cli, stable, summary
from edge_sel.cli import main
from edge_sel.core.records import RECORD_FIELDS
from edge_sel.models import load_checkpoint


@pytest.fixture(scope="module")
def synthetic_warmup(tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "ckpt"
    run_cli("pretrain", "--dataset", "synthetic", "--model", "edgecnn", "--epochs", 2, "--batch-size", 64,
            "--shard", "0/2", "--out", out, "--quiet")
    return out


def finetune(ckpt, out, *extra):
    return run_cli("finetune", "--checkpoint", ckpt, "--dataset", "synthetic", "--shard", "1/2", "--epochs", 2,
                   "--batch-size", 64, "--out", out, "--quiet", *extra)


def test_pretrain_writes_a_described_checkpoint(synthetic_warmup):
    card = json.loads((synthetic_warmup / "model.json").read_text())
    assert card["architecture"] == "edgecnn" and card["num_classes"] == 4
    assert card["input_shape"] == [3, 16, 16]
    assert len(card["normalization"]["mean"]) == 3 and all(s > 0 for s in card["normalization"]["std"])
    assert card["dataset"]["name"] == "synthetic" and len(card["dataset"]["fingerprint"]) == 16
    assert card["training"]["epochs"] == 2 and card["edge_sel_version"]
    tensors = load_file(str(synthetic_warmup / "model.safetensors"))
    assert any(k.endswith("running_mean") for k in tensors)     # BN statistics travel too


def hand_count_forward_flops(model, input_shape) -> int:
    """2 x multiply-adds of every Conv2d and Linear for one sample, from the output shapes."""
    import torch
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * k * output.numel()
        elif isinstance(module, torch.nn.Linear):
            total += 2 * module.in_features * output.numel()
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def test_finetune_records_every_field(synthetic_warmup, tmp_path):
    run = tmp_path / "run"
    finetune(synthetic_warmup, run)
    for name in ("metrics.jsonl", "metrics.csv", "summary.json", "model.safetensors", "model.json"):
        assert (run / name).is_file(), name
    recs = records(run)
    assert [r["epoch"] for r in recs] == [0, 1]
    classes = json.loads((synthetic_warmup / "model.json").read_text())["class_names"]
    for r in recs:
        missing = [f for f in RECORD_FIELDS if f not in r]
        missing += [f"{p}_{c}" for c in classes for p in ("acc", "E", "C") if f"{p}_{c}" not in r]
        assert not missing, missing
        assert r["phase"] == "finetune" and r["strategy"] == "dense"
        assert r["backward_samples"] == r["samples_available"] and r["activation"] == 1.0
        assert r["flops_forward"] > 0 and r["flops_backward"] > r["flops_forward"]
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1
        if r is recs[-1]:        # the test set runs after the last epoch only (unless --eval-test every)
            assert r["evaluated"] == "val+test" and 0 <= r["test_acc"] <= 1
            assert r["test_samples_evaluated"] > 0 and all(r[f"acc_{c}"] is not None for c in classes)
        else:
            assert r["evaluated"] == "val" and r["test_acc"] is None and r["test_samples_evaluated"] == 0
            assert r["flops_eval"] < recs[-1]["flops_eval"]
        assert r["params_updated_frac"] > 0.9
        for c in classes:
            assert r[f"C_{c}"] == pytest.approx(max(0.0, 1 - r[f"E_{c}"]))
    # The flops of an epoch are the per-sample count times the samples trained: counted by hand here
    # from each conv and linear layer's shapes (what torch's counter counts: multiply-adds x 2).
    model, card = load_checkpoint(synthetic_warmup)
    per_sample = hand_count_forward_flops(model, card.input_shape)
    assert recs[0]["flops_forward"] == recs[1]["flops_forward"] == per_sample * recs[0]["backward_samples"]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[: len(RECORD_FIELDS)] == RECORD_FIELDS
    s = summary(run)
    assert s["totals"]["flops_forward"] == sum(r["flops_forward"] for r in recs)
    assert s["final"]["test_acc"] == recs[-1]["test_acc"]
    model, card = load_checkpoint(run)       # the run directory is itself a checkpoint
    assert card.mean == json.loads((synthetic_warmup / "model.json").read_text())["normalization"]["mean"]


def test_same_seed_gives_identical_records(synthetic_warmup, tmp_path):
    finetune(synthetic_warmup, tmp_path / "a", "--seed", "3", *SAME_CHOICES)
    finetune(synthetic_warmup, tmp_path / "b", "--seed", "3", *SAME_CHOICES)
    finetune(synthetic_warmup, tmp_path / "c", "--seed", "4", *SAME_CHOICES)
    a, b, c = (stable(records(tmp_path / n)) for n in "abc")
    assert a == b
    assert a != c
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_finetune_improves_on_digits(tmp_path):
    run_cli("pretrain", "--dataset", "digits", "--epochs", 3, "--batch-size", 64, "--shard", "0/2",
            "--out", tmp_path / "w", "--quiet")
    run_cli("finetune", "--checkpoint", tmp_path / "w", "--dataset", "digits", "--shard", "1/2", "--epochs", 3,
            "--batch-size", 64, "--lr", "0.02", "--out", tmp_path / "f", "--quiet")
    warm = summary(tmp_path / "w")["final"]["test_acc"]
    tuned = records(tmp_path / "f")
    assert tuned[-1]["test_acc"] >= 0.85
    assert tuned[-1]["test_acc"] >= warm - 0.02


def test_existing_out_is_never_overwritten_silently(synthetic_warmup, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run_cli(
        "finetune", "--checkpoint", synthetic_warmup, "--dataset", "synthetic", "--epochs", 1,
        "--out", out, "--quiet", expect=2)
    assert "--overwrite" in result.output
    assert (out / "precious.txt").read_text() == "keep me"
    # A bad input with --overwrite still leaves the old run alone: inputs are checked first.
    run_cli("finetune", "--checkpoint", tmp_path / "missing", "--dataset", "synthetic", "--epochs", 1,
            "--out", out, "--overwrite", "--quiet", expect=2)
    assert (out / "precious.txt").read_text() == "keep me"


BAD_INPUTS = [
    (["--checkpoint", "{missing}"], "no such directory"),
    (["--epochs", "-1"], "'--epochs': -1 is not in the range 0<=x<=100000"),
    (["--dataset", "digits"], "model expects inputs [3, 16, 16]"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "folder:{missing}"], "no such directory"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--strategy", "magic"], "'--strategy': 'magic' is not one of"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--shard", "3/2"], "--shard"),
    (["--device", "tpu"], "--device"),
]


def main_exit(argv, monkeypatch, capsys) -> tuple[int, str]:
    """Run the console entry point in-process, as a user's shell would."""
    monkeypatch.setattr(sys, "argv", ["edge-sel", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(synthetic_warmup, tmp_path, monkeypatch, capsys, args, message):
    args = [a.replace("{missing}", str(tmp_path / "missing")) for a in args]
    base = {"--checkpoint": str(synthetic_warmup), "--dataset": "synthetic", "--epochs": "1"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["finetune", *[x for kv in base.items() for x in kv], "--out", str(tmp_path / "out"), "--quiet"]
    code, err = main_exit(argv, monkeypatch, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("edge-sel: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_console_script_reports_usage_errors_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "edge_sel", "finetune", "--epochs", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["edge-sel: error: missing option '--checkpoint'"]


def test_mismatched_class_count_and_corrupt_weights(synthetic_warmup, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_warmup, broken)
    card = json.loads((broken / "model.json").read_text())
    # A card consistent in itself (5 classes, 5 names) whose weights have another number of outputs.
    card["num_classes"], card["class_names"] = 5, [f"c{i}" for i in range(5)]
    (broken / "model.json").write_text(json.dumps(card))
    result = run_cli("finetune", "--checkpoint", broken, "--dataset", "synthetic", "--epochs", 1,
                     "--out", tmp_path / "o", "--quiet", expect=2)
    assert "model.safetensors" in result.output and "does not match" in result.output
    shutil.copy(synthetic_warmup / "model.json", broken / "model.json")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    result = run_cli("finetune", "--checkpoint", broken, "--dataset", "synthetic", "--epochs", 1,
                     "--out", tmp_path / "o", "--quiet", expect=2)
    assert "corrupt" in result.output
    (broken / "model.json").write_text("{not json")
    result = run_cli("finetune", "--checkpoint", broken, "--dataset", "synthetic", "--epochs", 1,
                     "--out", tmp_path / "o", "--quiet", expect=2)
    assert "model.json" in result.output


def test_demo_runs_and_says_where_the_run_is(tmp_path):
    result = run_cli("demo", "--out", tmp_path / "demo", "--epochs", 2)
    assert f"run directory: {tmp_path / 'demo'}" in result.output
    recs = records(tmp_path / "demo" / "finetune")
    assert len(recs) == 2 and recs[-1]["test_acc"] > 0.5      # from chance on the shifted digits
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    # The story: the clean warmup fails on the device's low-contrast digits, BatchNorm re-estimation
    # recovers most of it for a sliver of dense fine-tuning's compute.
    none = records(tmp_path / "demo" / "none", baseline=True)[-1]
    bn = records(tmp_path / "demo" / "bn-adapt")[-1]
    assert none["test_acc"] < 0.3 and bn["test_acc"] > 0.8
    assert bn["flops_train"] < 0.2 * sum(r["flops_train"] for r in recs)
    assert "BatchNorm re-estimation" in result.output and "recipe" in result.output
    # Forgetting in plain sight: the warmup's row loses nothing, re-estimation loses clean accuracy.
    rows = {line[2:46].strip(): line[46:].split() for line in result.output.splitlines() if line.startswith("  ")}
    assert "forgot" in rows["method"] and rows["no adaptation (the warmup)"][2] == "+0.0"
    assert float(rows["BatchNorm re-estimation (500 images)"][2]) > 10
    # Statistics kept per condition adapt like re-estimation and keep the clean digits.
    shifted, _, forgot = rows["statistics per condition (--bn-conditions 4)"][:3]
    assert float(shifted.rstrip("%")) > 80 and float(forgot) < 3
    # The report shows every row of the table (no adaptation too), at the accuracies the table printed.
    import csv
    report = {r["run"]: r for r in csv.DictReader(open(tmp_path / "demo" / "report" / "runs.csv"))}
    for label, name in (("dense fine-tune, 2 epochs", "finetune"), ("no adaptation (the warmup)", "none"),
                        ("BatchNorm re-estimation (500 images)", "bn-adapt"), ("recipe (--preset adapt)", "recipe"),
                        ("statistics per condition (--bn-conditions 4)", "conditions")):
        printed = rows[label][:2]
        shown = [f"{100 * float(report[name][key]):.1f}%" for key in ("output_test_acc", "output_clean_test_acc")]
        assert shown == printed, (label, shown, printed)
    again = run_cli("demo", "--out", tmp_path / "demo", "--epochs", 1, expect=2)
    assert "--overwrite" in again.output
    assert len(records(tmp_path / "demo" / "finetune")) == 2     # the earlier demo is untouched


def test_pretrain_prints_its_summary_without_quiet(tmp_path):
    result = run_cli("pretrain", "--dataset", "digits", "--subset", "200", "--epochs", "1", "--out", tmp_path / "w")
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["model"]["architecture"] == "edgecnn" and "pretrain: edgecnn" in result.output
