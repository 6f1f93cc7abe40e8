"""A directory given on the command line that is missing, or lacks the file that makes it what the
option expects, is one line naming the option, the directory and the file; exit 2."""

import pytest

from helpers import run_main


@pytest.mark.parametrize("argv,expected", [
    (["finetune", "--checkpoint", "{dir}", "--epochs", "1", "--out", "{tmp}/out"],
     "--checkpoint {dir}: model.json is missing (not an edge-sel checkpoint)"),
    (["finetune", "--resume", "{dir}"], "--resume {dir}: config.json is missing (not an edge-sel run directory)"),
    (["report", "{dir}", "--out", "{tmp}/out"], "RUN {dir}: metrics.jsonl is missing (not an edge-sel run directory)"),
    (["finetune", "--resume", "{tmp}/nowhere"], "--resume {tmp}/nowhere: no such directory"),
])
def test_missing_directory_or_file_is_one_line(tmp_path, capsys, argv, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    fill = {"{dir}": str(empty), "{tmp}": str(tmp_path)}

    def filled(text):
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    code, err = run_main([filled(a) for a in argv], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and filled(expected) in lines[0], err
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_weights_names_the_weights_file(tiny_warm, tmp_path, capsys):
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "model.json").write_text((tiny_warm / "model.json").read_text())
    code, err = run_main(["finetune", "--checkpoint", broken, "--dataset", "synthetic", "--epochs", "1",
                          "--out", tmp_path / "out"], capsys)
    assert code == 2 and f"--checkpoint {broken}: model.safetensors is missing" in err, err


def test_missing_artifacts_directory_names_the_option(tiny_warm, tmp_path, capsys):
    code, err = run_main(["finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                          "--backend", "ort", "--artifacts", tmp_path / "nowhere", "--out", tmp_path / "out"], capsys)
    assert code == 2 and f"--artifacts {tmp_path / 'nowhere'}: no such directory" in err, err
    assert not (tmp_path / "out").exists()
