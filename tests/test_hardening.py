"""Regressions found by using edge-sel as a new user would: presets, option checks, hardware paths
this machine never runs, split safety, disk errors, energy labels."""

import json
import sys

import pytest
import torch

from helpers import run_cli
from edge_sel.config import TrainConfig
from edge_sel.methods.presets import PRESETS, apply_preset

# The training options each preset's published recipe sets.
RECIPES = {
    "ast-prod": {"optimizer": "sgd", "lr": 0.005, "weight_decay": 1e-4, "label_smoothing": 0.0},
    "ast-two": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "label_smoothing": 0.1},
    "sel-95": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "schedule": "constant"},
    "warmup-sel": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64},
    "sel-v3": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64},
}


def test_every_preset_has_its_recipe_checked_here():
    # "adapt" sets methods only (no training options); tests/test_bench_adapt.py checks it.
    assert set(PRESETS) == set(RECIPES) | {"adapt"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_preset_sets_its_recipe_over_command_line_defaults(tiny_warm, tmp_path, name):
    out = tmp_path / "run"
    strategy = "sundew" if name.startswith("ast") else "sel"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0", "--strategy", strategy,
            "--preset", name, "--out", out, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in RECIPES[name]} == RECIPES[name]
    assert not config["method"].get("preset_notes")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_an_option_the_user_typed_wins_over_the_preset_and_is_noted(tiny_warm, tmp_path, name):
    out = tmp_path / "run"
    strategy = "sundew" if name.startswith("ast") else "sel"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0", "--strategy", strategy,
            "--preset", name, "--lr", "0.05", "--out", out, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.05 and any("kept lr=0.05" in n for n in config["method"]["preset_notes"])


def test_the_python_api_keeps_non_default_values_and_takes_the_preset_otherwise():
    cfg = apply_preset(TrainConfig(strategy="sundew", method={"preset": "ast-two"}))
    assert (cfg.optimizer, cfg.lr) == ("adamw", 1e-3)          # 0.05 was sgd's default, not a choice
    cfg = apply_preset(TrainConfig(strategy="sundew", lr=0.02, method={"preset": "ast-two"}))
    assert cfg.lr == 0.02


# ---- hardware paths this machine never runs, with injected capabilities --------------------------

def test_accumulators_avoid_float64_where_the_device_has_none(monkeypatch, tiny_warm, tmp_path):
    from edge_sel import device_caps
    from edge_sel.engine.evaluation.evaluate import EmbarrassmentMeter
    from edge_sel.methods.select.hardness import HardnessStore
    assert device_caps.accumulator_dtype(torch.device("mps")) == torch.float32
    assert device_caps.accumulator_dtype(torch.device("cpu")) == torch.float64
    monkeypatch.setattr(device_caps, "supports_float64", lambda device: False)    # the CPU plays MPS
    assert EmbarrassmentMeter(3, 1.5, torch.device("cpu")).sum.dtype == torch.float32
    assert HardnessStore(torch.arange(5), num_classes=3).lr_mark.dtype == torch.float32
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--strategy", "dihcl",
            "--sparsity", "layers", "--out", out, "--quiet")
    from helpers import records
    assert records(out)[0]["train_loss"] > 0


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((6, 1), torch.float16),
                                                 ((8, 0), torch.bfloat16), ((8, 7), torch.bfloat16)])
def test_bf16_only_with_native_support(monkeypatch, capability, expected):
    from edge_sel import device_caps
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device_caps.amp_dtype(torch.device("cuda")) == expected
    assert device_caps.amp_dtype(torch.device("cpu")) is None


def test_grad_scaler_falls_back_before_torch_2_3(monkeypatch):
    from edge_sel import device_caps

    class OldScaler:
        pass
    monkeypatch.delattr(torch.amp, "GradScaler")          # torch 2.1 and 2.2 have no torch.amp.GradScaler
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", OldScaler)
    assert isinstance(device_caps.grad_scaler(), OldScaler)


def test_peak_memory_units_per_platform(monkeypatch, tmp_path):
    import types

    from edge_sel import device_caps
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1 kB\n")
    monkeypatch.setattr(device_caps, "PROC_STATUS", str(status))     # Linux: this process image's own peak
    assert device_caps.peak_rss_mb() == 200
    monkeypatch.setattr(device_caps, "PROC_STATUS", str(tmp_path / "none"))
    fake = types.SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: types.SimpleNamespace(ru_maxrss=2**30))
    monkeypatch.setitem(sys.modules, "resource", fake)
    monkeypatch.setattr(sys, "platform", "darwin")        # bytes
    assert device_caps.peak_rss_mb() == 1024
    monkeypatch.setattr(sys, "platform", "linux")         # KiB
    assert device_caps.peak_rss_mb() == 2**20
    monkeypatch.setitem(sys.modules, "resource", None)    # Windows: no resource module
    assert 0 < device_caps.peak_rss_mb() < 2**20


# ---- state files load without running pickled code ------------------------------------------------

class Payload:
    """Stands in for anything a hostile or foreign state file could make torch.load construct."""


def test_a_state_file_with_pickled_objects_is_refused(tmp_path):
    import hashlib
    import io

    from edge_sel.engine.loop import state as state_mod
    buf = io.BytesIO()
    torch.save({"format": "edge-sel-train-state/1", "x": Payload()}, buf)
    payload = buf.getvalue()
    blob = state_mod.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    with pytest.raises(ValueError, match="objects other than tensors"):
        state_mod.decode(blob)
    (tmp_path / state_mod.CURRENT).write_bytes(blob)
    with pytest.raises(state_mod.NoValidState):
        state_mod.load_state(tmp_path)


def test_numpy_values_in_a_state_come_back_as_tensors_and_numbers(tmp_path):
    import numpy as np

    from edge_sel.engine.loop import state as state_mod
    state = {"rng": np.random.get_state(), "n": np.int64(3), "a": np.arange(4)}
    back = state_mod.decode(state_mod.encode(state))
    assert back["n"] == 3 and torch.equal(back["a"], torch.arange(4))
    np.random.set_state(tuple(x.numpy() if torch.is_tensor(x) else x for x in back["rng"]))


# ---- energy labels --------------------------------------------------------------------------------

@pytest.mark.parametrize("method,label", [("estimated", "estimated"), ("counter", "measured"),
                                          ("counter+integrated", "measured"), ("counter+estimated", "partly estimated"),
                                          ("estimated+integrated", "partly estimated"), (None, "estimated")])
def test_the_summary_never_calls_an_estimate_measured(method, label):
    from edge_sel.report.summary import energy_label
    assert energy_label(method) == label


# ---- options: listed choices, help text, nothing silently ignored ---------------------------------

def all_commands():
    import click

    from edge_sel.cli import cli

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), cmd
    return list(walk(cli, []))


def test_every_option_of_every_command_has_help_text():
    import click
    # Section headings of grouped help are hidden options without flags: not options a user types.
    missing = [(name, p.opts[0]) for name, cmd in all_commands() for p in cmd.params
               if isinstance(p, click.Option) and p.opts and not (p.help or "").strip()]
    assert missing == []


def test_named_choices_are_listed_in_help():
    import click
    finetune = dict(all_commands())["finetune"]
    choices = {p.name: p.type.choices for p in finetune.params if isinstance(p.type, click.Choice)}
    for name in ("strategy", "gate", "preset", "backend", "difficulty", "meters"):
        assert name in choices and len(choices[name]) >= 2
    assert "sundew" in choices["strategy"] and "ast-two" in choices["preset"] and "estimate" in choices["meters"]


@pytest.mark.parametrize("args,option", [
    (["--strategy", "sundew", "--class-focus"], "--class-focus"),
    (["--target-activation", "0.3"], "--target-activation"),
    (["--guilt-percentile", "30"], "--guilt-percentile"),
    (["--strategy", "sel", "--sparsity", "mask", "--probe-every", "5"], "--probe-every"),
    (["--strategy", "random", "--prune-ratio", "0.3"], "--prune-ratio"),
    (["--strategy", "dense", "--significance", "dih"], "--significance"),
])
def test_an_option_the_run_would_ignore_is_one_line_exit_2(tiny_warm, tmp_path, args, option):
    out = tmp_path / "run"
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", *args,
                     "--out", out, "--quiet", expect=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edge-sel: error: {option}:") and "applies to" in lines[0]
    assert not out.exists()


def test_options_a_run_uses_are_accepted(tiny_warm, tmp_path):
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--strategy", "sel",
            "--gate", "sundew", "--target-activation", "0.5", "--significance", "dih", "--probe-every", "5",
            "--out", tmp_path / "run", "--quiet")


# ---- a bad input never destroys an earlier run ----------------------------------------------------

@pytest.mark.parametrize("args,option", [
    (["--backend", "ort", "--artifacts", "no-such-artifacts", "--optimizer", "sgd", "--momentum", "0",
      "--weight-decay", "0"], "--artifacts"),
    (["--strategy", "sel", "--class-focus", "--class-focus-floor", "0.5"], "--class-focus-floor"),
    (["--sparsity", "lottery"], "--sparsity lottery"),
    (["--backend", "ort", "--artifacts", "no-such-artifacts", "--sparsity", "mask"], "--"),
])
def test_bad_options_checked_late_leave_an_existing_run_untouched(tiny_warm, tmp_path, args, option):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--out", out, "--quiet")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", *args,
                     "--out", out, "--overwrite", "--quiet", expect=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ---- validation never overlaps the pretrain's training samples ------------------------------------

def test_a_fine_tune_must_hold_out_the_pretrains_validation_split(tmp_path):
    warm = tmp_path / "warm"
    run_cli("pretrain", "--dataset", "digits", "--epochs", "1", "--shard", "0/2", "--val-fraction", "0.2",
            "--out", warm, "--quiet")
    card = json.loads((warm / "model.json").read_text())["dataset"]
    assert (card["val_fraction"], card["split_seed"]) == (0.2, 0)
    common = ["finetune", "--checkpoint", warm, "--dataset", "digits", "--epochs", "0", "--shard", "1/2", "--quiet"]
    for option, value, saved in (("--val-fraction", "0.1", "0.2"), ("--split-seed", "3", "0")):
        extra = [] if option == "--val-fraction" else ["--val-fraction", "0.2"]
        result = run_cli(*common, *extra, option, value, "--out", tmp_path / "bad", expect=2)
        line = result.output.strip()
        assert line.startswith(f"edge-sel: error: {option} {value}:") and f"{option} {saved}" in line
        assert not (tmp_path / "bad").exists()
    run_cli(*common, "--val-fraction", "0.2", "--out", tmp_path / "ok")
    # Another dataset, or a checkpoint card from before split parameters were stored, is accepted.
    run_cli("finetune", "--checkpoint", warm, "--dataset", "synthetic", "--epochs", "0", "--quiet",
            "--out", tmp_path / "other", expect=2)   # synthetic has other shapes: refused for that, not the split
    del card["val_fraction"]
    full = json.loads((warm / "model.json").read_text())
    full["dataset"] = card
    (warm / "model.json").write_text(json.dumps(full))
    run_cli(*common, "--out", tmp_path / "old")


# ---- a full disk outside the state files is one line, exit 1 --------------------------------------

def _full_disk(*args, **kwargs):
    import errno
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target,name", [("records", "metrics.jsonl"), ("summary", "summary.json"),
                                         ("weights", "model.safetensors")])
def test_a_full_disk_while_writing_run_files_is_one_line_exit_1(tiny_warm, tmp_path, monkeypatch, target, name):
    import builtins

    from edge_sel.core import checkpoint, records
    from edge_sel.engine.runs import training as run
    from edge_sel.engine.loop.state import load_state
    if target == "records":
        real_open = builtins.open
        monkeypatch.setattr(records, "open", lambda p, mode="r", *a, **k: _full_disk() if str(p).endswith(name)
                            and "a" in mode else real_open(p, mode, *a, **k), raising=False)
    elif target == "summary":
        real_write = run.atomic_write_bytes
        monkeypatch.setattr(run, "atomic_write_bytes",
                            lambda p, data: _full_disk() if p.name == name else real_write(p, data))
    else:
        monkeypatch.setattr(checkpoint, "write_safetensors", _full_disk)
    out = tmp_path / "run"
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--out", out,
                     "--quiet", expect=1)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-sel: error:") and name in lines[0], result.output
    assert "No space left" in lines[0]
    assert load_state(out / "state")["format"].startswith("edge-sel-train-state")     # the run can resume
    assert not list(out.glob(".*tmp*"))


# ---- resuming ----------------------------------------------------------------------------------

def test_resume_refuses_options_it_would_ignore(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--out", out, "--quiet")
    (out / "summary.json").unlink()
    result = run_cli("finetune", "--resume", out, "--lr", "0.5", "--epochs", "9", "--quiet", expect=2)
    line = result.output.strip()
    assert line.startswith("edge-sel: error: --resume:") and "--lr" in line and "--epochs" in line
    result = run_cli("pretrain", "--resume", out, "--quiet", expect=2)       # a finetune run
    assert "edge-sel finetune --resume" in result.output


def test_pretrain_resumes_and_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    from helpers import SAME_CHOICES, records, stable
    args = ["pretrain", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "32", "--quiet", *SAME_CHOICES]
    reference = tmp_path / "reference"
    run_cli(*args, "--out", reference)
    # Everything a start writes before its first checkpoint: the directory and its config.
    out = tmp_path / "run"
    run_cli(*args, "--out", out)
    import shutil
    shutil.rmtree(out / "state")
    for name in ("metrics.jsonl", "metrics.csv", "summary.json", "model.safetensors", "model.json"):
        (out / name).unlink()
    run_cli("pretrain", "--resume", out, "--quiet")
    assert stable(records(out)) == stable(records(reference))
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_a_typed_strategy_wins_over_the_adapt_recipe(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0", "--preset", "adapt",
            "--strategy", "dense", "--bn-adapt", "0", "--out", out, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert (config["strategy"], config["bn_adapt"]) == ("dense", 0)
    assert "kept strategy=dense (preset: random)" in config["method"]["preset_notes"]


def test_a_typed_strategy_a_recipe_cannot_run_is_refused(tiny_warm, tmp_path):
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0",
                     "--preset", "ast-prod", "--strategy", "dense", "--out", tmp_path / "run", expect=2)
    assert "--preset ast-prod: needs --strategy sundew, got 'dense'" in result.output
