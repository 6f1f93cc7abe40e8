"""What the program says, read as a new user reads it: epoch counts, units, the file a model comes
from, the tensor that does not fit, and the option a slip of the keyboard meant."""

import shutil

import pytest
import torch
from helpers import run_main
from safetensors.torch import load_file, save_file

import edge_sel
from edge_sel.engine.loop.progress_log import ProgressLog
from edge_sel.errors import InputError
from edge_sel.report.summary import shipped_line


def test_the_last_of_8_epochs_is_labelled_8_of_8():
    lines = []
    log = ProgressLog(quiet=False, epochs=8)
    log.enabled, log.line = True, lines.append
    log.epoch({"epoch": 7, "train_loss": 0.5})
    assert lines[0].startswith("epoch 7 (8 of 8): loss 0.500")


def test_a_small_fisher_is_counted_in_parameters_not_0_00_m():
    block = {"anchors": {"samples": 20, "bytes": 2000, "replay": 10, "guard": 10, "guard_acc": 0.9},
             "fisher": {"parameters": 2290, "samples": 20, "bytes": 9160}, "source": {"bytes": 9160},
             "flops": 1e6, "wall_s": 0.1}
    assert "Fisher of 2,290 parameters on 20 samples" in shipped_line(block)
    block["fisher"]["parameters"] = 11_200_000
    assert "Fisher of 11.20 M parameters" in shipped_line(block)


def test_a_missing_callable_in_a_model_file_names_the_file(tmp_path, capsys):
    file = tmp_path / "net.py"
    file.write_text("from torch import nn\n\ndef Net(num_classes):\n    return nn.Linear(64, num_classes)\n")
    code, err = run_main(["pretrain", "--model", f"{file}:Nett", "--epochs", "0", "--out", tmp_path / "run"], capsys)
    assert code == 2 and f"{file} has no attribute 'Nett'" in err and "edge_sel_user_model" not in err, err


def test_weights_that_do_not_fit_name_the_first_tensor_and_both_shapes(tiny_warm, tmp_path, capsys):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_warm, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k, v in weights.items() if v.dim() == 4)          # the first convolution
    shape = tuple(weights[name].shape)
    weights[name] = torch.zeros(shape[0] + 1, *shape[1:])
    save_file(weights, str(broken / "model.safetensors"))
    code, err = run_main(["finetune", "--checkpoint", broken, "--dataset", "synthetic", "--epochs", "1",
                          "--out", tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{name}: the weights hold {(shape[0] + 1, *shape[1:])}, the model has {shape}" in err, err
    assert "Error(s) in loading state_dict" not in err


@pytest.mark.parametrize("typed, meant", [("--lr-rate", "--lr"), ("--learning-rate", "--lr"),
                                          ("--batchsize", "--batch-size"), ("--num-epochs", "--epochs")])
def test_a_mistyped_option_suggests_the_one_meant(capsys, typed, meant):
    code, err = run_main(["finetune", typed, "1"], capsys)
    assert code == 2 and err.strip().endswith(f"Did you mean {meant}?"), err


@pytest.mark.parametrize("typed, meant", [("learning_rate", "lr"), ("batchsize", "batch_size"),
                                          ("num_epochs", "epochs"), ("output_dir", "out")])
def test_the_python_api_maps_other_tools_names(typed, meant):
    with pytest.raises(TypeError, match=rf"unknown option '{typed}'; did you mean {meant}\?"):
        edge_sel.finetune("unused", out="unused", epochs=1, **{typed: 1})


def test_an_input_error_is_what_a_bad_value_raises_through_the_api():
    with pytest.raises(InputError, match="--epochs"):
        edge_sel.finetune("unused", out="unused", epochs=-1)
