"""BatchNorm statistics re-estimation: forward passes only, only running statistics change, its
FLOPs are counted, and on shifted inputs it recovers accuracy by itself."""

import torch

from helpers import records, run_cli, summary
from edge_sel.core.flops import FlopCounter
from edge_sel.engine.evaluation.bn_adapt import batchnorm_layers, reestimate_bn
from edge_sel.models import load_checkpoint


def test_only_running_statistics_change(tiny_warm):
    from edge_sel.engine.runs.data_options import DataOptions
    model, card = load_checkpoint(tiny_warm)
    splits = DataOptions("synthetic", shift="corrupt=contrast:5").load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [m.momentum for m in batchnorm_layers(model)]
    sizes = reestimate_bn(model, splits.train, torch.arange(300), card.mean, card.std, batch_size=128)
    assert sizes == [128, 128, 44]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert [m.momentum for m in batchnorm_layers(model)] == momenta


def test_bn_only_adaptation_is_a_forward_only_record_and_the_kept_model(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "0", "--bn-adapt", "200",
            "--shift", "corrupt=contrast:5", "--out", out, "--quiet",
            "--max-forgetting", "100")      # validation's choice alone: low-contrast statistics forget the clean anchors
    base, adapt = records(out, baseline=True)
    assert adapt["phase"] == "bn_adapt" and adapt["bn_adapt_samples"] == 200
    assert adapt["backward_samples"] == 0 and adapt["flops_backward"] == 0
    model, card = load_checkpoint(tiny_warm)
    per_sample = FlopCounter(model, card.input_shape).eval_batch(1)
    assert adapt["flops_forward"] == adapt["flops_train"] == adapt["flops_bn_adapt"] == 200 * per_sample
    assert adapt["val_acc"] > base["val_acc"]          # contrast collapses the statistics the model expects
    kept = summary(out)["kept"]
    assert kept["kept"] == "best" and kept["kept_epoch"] == 0
    adapted, _ = load_checkpoint(out)
    start, _ = load_checkpoint(tiny_warm)
    for (name, p), q in zip(adapted.named_parameters(), start.parameters()):
        assert torch.equal(p, q), name


def test_bn_adaptation_before_training_is_charged_to_the_first_epoch(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "2", "--bn-adapt", "64",
            "--out", out, "--quiet")
    first, second = records(out)
    assert first["bn_adapt_samples"] == 64 and "bn_adapt_samples" not in second
    assert first["forward_samples"] == first["backward_samples"] + 64
    assert first["flops_train"] == first["flops_forward"] + first["flops_backward"] + first["flops_bn_adapt"]
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                     "--bn-adapt", "-3", "--out", tmp_path / "bad", "--quiet", expect=2)
    assert "--bn-adapt" in result.output
