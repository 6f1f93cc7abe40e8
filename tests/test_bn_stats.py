"""The BatchNorm statistics lever (--bn-stats): frozen statistics stay byte for byte what the start's
were; re-estimated ones move at the stated momentum; the mode is stated in config.json, the card,
summary.json and every record; the older names (--bn-mode, --bn-conditions) choose the same."""

import json

import pytest
import torch

from helpers import SAME_CHOICES, records, run_cli, run_main, summary
from edge_sel.config import TrainConfig
from edge_sel.core import bn_stats
from edge_sel.errors import InputError
from edge_sel.models import load_checkpoint

# One step on 64 images at batch 64: the only pass in training mode is the step's own forward.
ONE_STEP = ["--dataset", "synthetic", "--subset", "64", "--batch-size", "64", "--epochs", "1", "--keep", "last",
            "--no-augment", "--quiet", *SAME_CHOICES]


def statistics(run_or_checkpoint) -> dict:
    model, _ = load_checkpoint(run_or_checkpoint)
    return {f"{name}.{k}": v for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for k, v in m.named_buffers(recurse=False)}


def stated(run_dir) -> list:
    """bn_stats and bn_momentum as config.json, the card, summary.json and each record state them."""
    config = json.loads((run_dir / "config.json").read_text())
    card = json.loads((run_dir / "model.json").read_text())["training"]
    return [(d["bn_stats"], d["bn_momentum"]) for d in (config, card, summary(run_dir), summary(run_dir)["config"],
                                                        *records(run_dir, baseline=True))]


@pytest.mark.parametrize("lever", [["--bn-stats", "frozen"], ["--bn-mode", "eval"]])
def test_frozen_statistics_stay_byte_identical_and_are_stated(tiny_warm, tmp_path, lever):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, *ONE_STEP, "--sparsity", "bn-affine", *lever, "--out", out)
    before, after = statistics(tiny_warm), statistics(out)
    assert before.keys() == after.keys() and any(k.endswith("num_batches_tracked") for k in before)
    for name, value in before.items():
        assert after[name].dtype == value.dtype and after[name].numpy().tobytes() == value.numpy().tobytes(), name
    start, _ = load_checkpoint(tiny_warm)
    end, _ = load_checkpoint(out)
    affine = [n for n, m in start.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert any(not torch.equal(start.get_submodule(n).weight, end.get_submodule(n).weight) for n in affine)
    rows = stated(out)
    assert len(rows) == 6 and set(rows) == {("frozen", None)}


def test_reestimated_statistics_move_at_the_stated_momentum(tiny_warm, tmp_path):
    runs = {m: tmp_path / f"m{m}" for m in ("0.25", "1.0")}
    for m, out in runs.items():
        run_cli("finetune", "--checkpoint", tiny_warm, *ONE_STEP, "--sparsity", "classifier", "--bn-stats",
                "reestimate", "--bn-momentum", m, "--out", out)
        assert set(stated(out)) == {("reestimate", float(m))}
    old, quarter, whole = statistics(tiny_warm), statistics(runs["0.25"]), statistics(runs["1.0"])
    for name in old:
        if name.endswith("num_batches_tracked"):
            assert quarter[name] == whole[name] == old[name] + 1
        else:       # one step: new = (1 - m) old + m batch, and at m = 1 new is the batch's own
            assert not torch.equal(quarter[name], old[name])
            torch.testing.assert_close(quarter[name], 0.75 * old[name] + 0.25 * whole[name], rtol=1e-5, atol=1e-6)


def test_the_default_and_the_older_names_resolve_to_one_mode():
    assert bn_stats.resolve(TrainConfig()) == "reestimate"
    cfg = TrainConfig(bn_stats="frozen")
    assert bn_stats.resolve(cfg) == "frozen" and cfg.bn_mode == "eval"
    cfg = TrainConfig(bn_stats="per-condition")
    assert bn_stats.resolve(cfg) == "per-condition" and cfg.bn_conditions == bn_stats.DEFAULT_CONDITIONS
    assert bn_stats.resolve(TrainConfig(bn_conditions=3)) == "per-condition"
    for contradiction in (dict(bn_stats="frozen", bn_mode="train"), dict(bn_stats="reestimate", bn_conditions=2),
                          dict(bn_stats="frozen", bn_adapt=10)):
        with pytest.raises(InputError, match="--bn-stats"):
            bn_stats.resolve(TrainConfig(**contradiction))


def test_a_contradiction_is_refused_in_one_line(tiny_warm, tmp_path, capsys):
    code, err = run_main(["finetune", "--checkpoint", tiny_warm, *ONE_STEP, "--bn-stats", "frozen", "--bn-mode",
                          "train", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "--bn-stats frozen with --bn-mode train" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    # A momentum for statistics that never move was accepted and dropped.
    for frozen in (["--bn-stats", "frozen"], ["--bn-mode", "eval"]):
        code, err = run_main(["finetune", "--checkpoint", tiny_warm, *ONE_STEP, *frozen, "--bn-momentum", "0.5",
                              "--out", tmp_path / "run"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
        assert f"--bn-momentum 0.5 with {' '.join(frozen)}: frozen statistics never move" in err


def test_the_stated_momentum_is_the_one_statistics_move_at():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2, momentum=0.05), torch.nn.BatchNorm2d(2))
    assert bn_stats.momentum_of(model, "reestimate", None) == 0.05 and bn_stats.momentum_of(model, "reestimate", 0.2) == 0.2
    assert bn_stats.momentum_of(model, "frozen", 0.05) is None and bn_stats.momentum_of(torch.nn.Linear(2, 2), "reestimate", 0.1) is None
