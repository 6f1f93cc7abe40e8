"""Numeric options bounded where a value cannot make sense: refused in one line that names the
option (or the environment variable it came from), before any data is read or any file written."""

import sys
import warnings

import pytest
import torch
from helpers import run_main, run_main_said

QUICK = ["--dataset", "digits", "--anchors-per-class", "0", "--quiet"]


@pytest.mark.parametrize("args, says", [
    (["--image-size", "0"], "'--image-size': 0 is not in the range 8<=x<=1024"),
    (["--image-size", "16"], "--image-size 16: resizes folder images only; --dataset digits has its own size"),
    # The help's placeholder is a folder's name too: it was refused as a dataset of its own size.
    (["--dataset", "folder:PATH", "--image-size", "16"], "--dataset folder:PATH: no such directory"),
    (["--max-temp", "-40"], "'--max-temp': -40.0 is not in the range 30.0<=x<=120.0"),
    (["--epochs", "1000000000000"], "'--epochs': 1000000000000 is not in the range 0<=x<=100000"),
    (["--subset", "0"], "'--subset': 0 is not in the range x>=1"),
    (["--val-fraction", "1"], "'--val-fraction': 1.0 is not in the range 0<=x<1"),
    (["--energy-budget", "0"], "'--energy-budget': 0.0 is not in the range x>0"),
])
def test_a_value_that_cannot_make_sense_is_one_line_exit_2(tmp_path, capsys, args, says):
    base = ["pretrain", *QUICK, "--out", tmp_path / "run"]
    if "--epochs" not in args:
        base += ["--epochs", "0"]
    code, err = run_main([*base, *args], capsys)
    assert code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_memory_budget_above_a_profiles_cap_is_refused(tiny_warm, tmp_path, capsys):
    """Issue [hardening], item 8: the command line took --memory-budget 1e9 where a profile's
    memory_budget_mb is capped at 1e7."""
    code, err = run_main(["finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                          "--out", tmp_path / "run", "--memory-budget", "1e9"], capsys)
    assert (code, err) == (2, "edge-sel: error: --memory-budget must be <= 10000000.0, got 1000000000.0\n")
    assert not (tmp_path / "run").exists()


def test_image_size_0_on_a_folder_names_the_option_not_an_image(tmp_path, capsys):
    from PIL import Image
    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(tmp_path / "images" / name / f"{i}.png")
    code, err = run_main(["pretrain", "--dataset", f"folder:{tmp_path / 'images'}", "--image-size", "0",
                          "--epochs", "0", "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and "'--image-size'" in err and ".png" not in err


def test_a_folder_of_another_size_than_the_checkpoint_names_image_size_before_decoding(tiny_warm, tmp_path, capsys,
                                                                                       monkeypatch):
    """Issue [hardening], item 8: forgetting --image-size decoded the whole folder before saying
    the sizes differ, without naming the option."""
    from PIL import Image
    for name in ("a", "b", "c", "d"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(tmp_path / "images" / name / f"{i}.png")
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path / "cache"))
    code, err = run_main(["finetune", "--checkpoint", tiny_warm, "--dataset", f"folder:{tmp_path / 'images'}",
                          "--epochs", "1", "--out", tmp_path / "run", "--quiet"], capsys)
    assert (code, err) == (2, f"edge-sel: error: --image-size: the checkpoint {tiny_warm} takes 16x16 images, the "
                              f"folder's are 12x12; pass --image-size 16\n")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()      # nothing decoded


def test_a_subset_larger_than_the_data_says_all_of_it_is_used(tmp_path, capsys):
    with warnings.catch_warnings():
        # Printed to stderr as the command prints it, not recorded by pytest.
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        warnings.simplefilter("always")
        code, err = run_main(["pretrain", *QUICK, "--epochs", "0", "--fisher-samples", "0", "--subset", "10000000",
                              "--out", tmp_path / "run"], capsys)
    assert code == 0
    assert "edge-sel: warning: --subset 10000000: there are only 1295 training samples" in err
    assert "all 1295 are used" in err


@pytest.mark.parametrize("variable, value, says", [
    ("EDGE_SEL_BN_CONDITIONS", "1", "EDGE_SEL_BN_CONDITIONS='1' (the environment's --bn-conditions): "
                                    "1 is neither 0 (off) nor >= 2"),
    ("EDGE_SEL_EPOCHS", "-3", "EDGE_SEL_EPOCHS='-3' (the environment's --epochs)"),
])
def test_a_bad_value_from_the_environment_names_the_variable(tmp_path, capsys, monkeypatch, variable, value, says):
    monkeypatch.setenv(variable, value)
    code, err = run_main(["night", "--home", tmp_path, "--profile", "generic"], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, says", [
    (["--dataset", "nosuch"], "--dataset: unknown dataset 'nosuch'; choose one of digits, cifar10"),
    (["--dataset", "folder:{tmp}/missing"], "--dataset folder:{tmp}/missing: no such directory"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}/missing"], "--data-dir: {tmp}/missing/cifar-10-batches-py does "
                                                               "not hold the CIFAR-10 archive"),
    (["--dataset", "digits", "--shift", "corrupt=nosuch:3"], "--shift: unknown corruption 'nosuch'"),
    pytest.param(["--dataset", "digits", "--device", "cuda"], "--device cuda: CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["--epochs", "-1"], "Invalid value for '--epochs': -1 is not in the range"),
])
def test_a_night_refused_for_a_bad_option_says_its_one_line_alone(tmp_path, capsys, args, says):
    """Before any run or profile is announced (the run's directory and the profile line printed
    first used to lead the error); a value typed on the command line is not said to come from the
    option's environment variable (click's '(env var: EDGE_SEL_EPOCHS)')."""
    args = [str(a).format(tmp=tmp_path) for a in args]
    code, out, err = run_main_said(["night", "--home", tmp_path / "home", *args], capsys)
    assert code == 2 and out == "" and err == f"edge-sel: error: {err.split('error: ', 1)[1]}", (out, err)
    assert len(err.splitlines()) == 1 and says.format(tmp=tmp_path) in err and "env var" not in err, err
    assert not (tmp_path / "home").exists()


def test_bn_conditions_0_is_off_and_1_is_refused_saying_so(tmp_path, capsys):
    code, err = run_main(["finetune", "--checkpoint", tmp_path, "--epochs", "1", "--bn-conditions", "1",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and "'--bn-conditions': 1 is neither 0 (off) nor >= 2" in err


def test_a_runs_directory_that_cannot_be_made_is_named_as_the_user_set_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("EDGE_SEL_RUNS", str(tmp_path / "a-file" / "runs"))
    code, err = run_main(["night", "--home", tmp_path, "--warmup", tmp_path, "--dataset", "digits",
                          "--profile", "generic", "--epochs", "1"], capsys)
    assert code == 2 and f"EDGE_SEL_RUNS {tmp_path / 'a-file' / 'runs'}: cannot create" in err, err
    assert "--out" not in err


def float_options(group, path=()):
    """(command path, option) for every option of every command that takes a number with a fraction."""
    import click
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from float_options(command, (*path, name))
            continue
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag and isinstance(param.type, click.types.FloatParamType):
                yield (*path, name), command, param


def test_every_number_an_option_takes_is_refused_when_not_finite():
    """`--target-activation nan` with --strategy sundew reached the loop (a ValueError, exit 1), and
    `--energy-budget nan` ran to the end: click's FLOAT takes nan and inf, and NaN passes every range
    check. Every number option of every command now refuses a number that is not finite, naming it, as it
    is parsed (before any required option is looked for)."""
    import click
    from edge_sel.cli import cli
    found = list(float_options(cli))
    assert len(found) > 40 and any(p.name == "target_activation" for _, _, p in found)
    for path, command, param in found:
        for value in ("nan", "inf", "-inf"):
            try:
                param.type_cast_value(click.Context(command), value)
            except click.BadParameter:
                continue            # out of the option's range (FloatRange): click refuses it in one line
            with pytest.raises(click.ClickException) as refused:
                command.make_context(path[-1], [param.opts[0], value], resilient_parsing=True)
            said = refused.value.format_message()
            assert f"'{param.opts[0]}'" in said and "is not a finite number" in said, (path, said)


def test_a_method_option_or_energy_setting_that_is_not_finite_is_refused_naming_it():
    """The Python API's configuration reaches no command line: NaN in a method option or an energy
    setting is refused in its checks, naming the option."""
    import math
    from edge_sel.config import TrainConfig
    from edge_sel.engine.machine.energy_setup import EnergyOptions
    from edge_sel.errors import InputError
    from edge_sel.methods.options import METHOD_OPTIONS
    from edge_sel.methods.select.gating_config import GatingConfig, gating_config
    floats = [o.name for o in METHOD_OPTIONS if o.attrs.get("type") is float]
    assert "target_activation" in floats and "energy_budget_per_epoch" in floats
    for name in floats:
        with pytest.raises(InputError, match=f"--{name.replace('_', '-')} must be a finite number, got nan"):
            TrainConfig(method={name: math.nan}).validate()
    gating = [name for name in floats if name in GatingConfig.__dataclass_fields__]
    for name in gating:
        with pytest.raises(InputError, match=f"--{name.replace('_', '-')} must"):
            gating_config({name: math.nan})
    for field, option in (("budget_j", "--energy-budget"), ("idle_baseline_s", "--idle-baseline"),
                          ("hysteresis_c", "thermal hysteresis"), ("max_pause_s", "--max-pause")):
        with pytest.raises(InputError, match=f"{option} must be a finite number, got nan"):
            EnergyOptions(**{field: math.nan}).validate()


def test_target_activation_nan_on_the_command_line_is_one_line_exit_2(tiny_warm, tmp_path, capsys):
    code, err = run_main(["finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                          "--strategy", "sundew", "--target-activation", "nan", "--out", tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "'--target-activation': nan is not a finite number" in err and not (tmp_path / "run").exists()
