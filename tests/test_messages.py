"""What the program says, read as a new user reads it: epoch counts, units, the file a model comes
from, the tensor that does not fit, and the option a slip of the keyboard meant."""

import shutil
import sys

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


def test_the_starting_evaluation_says_it_has_begun_and_on_a_terminal_counts_its_images(monkeypatch, capsys):
    """The starting evaluation of a large test set ran with nothing said (CIFAR-10: 15,000 images):
    the journal says what it evaluates before it begins; a terminal's bar counts predicted images."""
    import types

    from edge_sel.engine.loop.progress_log import image_bar
    lines = []
    log = ProgressLog(quiet=False, epochs=2)
    log.enabled, log.line = True, lines.append
    sets = types.SimpleNamespace(val=range(5000), anchors=None, test=range(10000), clean_test=range(10000),
                                 final_images=lambda: 25000)
    log.evaluating_start(sets)
    assert lines == ["start: evaluating the starting checkpoint on 25,000 images (5,000 validation, 10,000 test, "
                     "10,000 clean test)"]
    predict = lambda x: x * 2                                                   # noqa: E731
    with image_bar("start: evaluating", 6, quiet=False) as counted:          # no terminal: the predictor as it is
        assert counted(predict) is predict
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with image_bar("start: evaluating", 6, quiet=True) as counted:           # --quiet: nothing
        assert counted(predict) is predict
    with image_bar("start: evaluating", 6, quiet=False) as counted:
        counted_predict = counted(predict)
        assert torch.equal(counted_predict(torch.ones(4)), torch.full((4,), 2.0))
        counted_predict(torch.ones(2))
    bar = capsys.readouterr().err
    assert "start: evaluating:   0%|" in bar and "0/6 " in bar, bar


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
