"""What a pretrain ships for a device's life: anchors from its training split, the diagonal Fisher
information and the source weights, their sizes in the model card; a fine-tune carries them into
its run, the deployed model keeps them, and checkpoints without them still work."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import run_main

from edge_sel.config import TrainConfig
from edge_sel.core.flops import FlopCounter
from edge_sel.core.source_memory import ANCHORS_FILE, GUARD, REPLAY, SOURCE_FILES
from edge_sel.data import IndexedDataset
from edge_sel.engine.levers.fisher import diagonal_fisher
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.run import finetune, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

PER_CLASS, FISHER_SAMPLES = 12, 120
# Layout and precision given: nothing is measured (faster, and the same choice in every run).
FIXED = dict(memory_format="contiguous", eval_batch_size=256, precision="fp32")
WARM, LOCAL = dict(shard="0/2", subset=300), dict(shard="1/2", subset=200)


def tiny_pretrain(out, **cfg):
    return pretrain("edgecnn", DataOptions("digits", **WARM),
                    TrainConfig(**{"epochs": 1, "batch_size": 64, "seed": 3, **FIXED, "anchors_per_class": PER_CLASS,
                                   "fisher_samples": FISHER_SAMPLES, **cfg}),
                    out, quiet=True)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory") / "warm"
    return out, tiny_pretrain(out)


def card(directory):
    return json.loads((directory / "model.json").read_text())


def test_pretrain_writes_the_three_files_with_their_sizes_in_the_card(warm):
    out, summary = warm
    section = card(out)["source_memory"]
    for key, name in (("anchors", "anchors.safetensors"), ("fisher", "fisher.safetensors"),
                      ("source", "source.safetensors")):
        assert section[key]["file"] == name
        assert section[key]["bytes"] == (out / name).stat().st_size > 0
    assert section["anchors"]["per_class"] == PER_CLASS and section["anchors"]["seed"] == 3
    assert section["fisher"]["samples"] == FISHER_SAMPLES
    # the source weights are the checkpoint's own
    model, source = load_file(str(out / "model.safetensors")), load_file(str(out / "source.safetensors"))
    assert model.keys() == source.keys() and all(torch.equal(model[k], source[k]) for k in model)
    # the summary says what was shipped, and its FLOPs are in the all-in total
    block, totals = summary["source_memory"], summary["totals"]
    assert block["flops"] == block["flops_fisher"] + block["flops_eval"] == section["fisher"]["flops"] + block["flops_eval"]
    assert totals["flops_all"] == (totals["flops_train"] + totals["flops_eval"] + summary["layout"]["probe_flops"]
                                   + block["flops"])
    assert totals["energy_all_j"] == pytest.approx(totals["energy_j"] + totals["eval_energy_j"] + block["energy_j"])
    assert "source memory" in summary["totals_note"] and set(block["files"]) == set(SOURCE_FILES)
    from edge_sel.report.summary import all_in_line, shipped_line
    n = section["anchors"]["samples"]
    assert shipped_line(block).startswith(f"shipped with the checkpoint: {n} anchors (")
    assert f"source memory {block['flops'] / 1e9:.2f}" in all_in_line(summary)


def test_the_all_in_lines_parts_add_up_to_its_total(warm):
    """Issue [hardening], item 9: pretrain's "all in" read 262.47 GFLOP against 174.45 in its
    brackets: the layout probe's 88.02, in the total, was not shown."""
    import re
    from edge_sel.report.summary import all_in_line
    summary = json.loads((warm[0] / "summary.json").read_text())
    probed = {**summary, "layout": {**summary.get("layout", {}), "probe_flops": 88.02e9},
              "totals": {**summary["totals"], "flops_all": summary["totals"]["flops_all"]
                         - (summary.get("layout") or {}).get("probe_flops", 0) + 88.02e9}}
    for s in (summary, probed):
        line = all_in_line(s)
        total, parts = re.search(r"all in: ([\d.]+) GFLOP \(([^)]*)\)", line).groups()
        numbers = [float(p.rsplit(" ", 1)[1]) for p in parts.split(", ")]
        assert float(total) == pytest.approx(sum(numbers), abs=0.005 * len(numbers)), line
    assert "layout probe 88.02" in all_in_line(probed)


def test_anchors_are_training_samples_half_replay_half_guard_per_class(warm):
    out, _ = warm
    splits = DataOptions("digits", **WARM).load()
    a = load_file(str(out / ANCHORS_FILE))
    ids, labels, role = a["index"], a["labels"], a["role"].long()
    assert torch.isin(ids, splits.train.index).all() and not torch.isin(ids, splits.val.index).any()
    assert len(ids.unique()) == len(ids)
    # the stored images and labels are the training split's for those ids
    where = {int(i): p for p, i in enumerate(splits.train.index.tolist())}
    pos = torch.tensor([where[int(i)] for i in ids])
    assert torch.equal(a["images"], splits.train.images[pos]) and torch.equal(labels, splits.train.labels[pos])
    section = card(out)["source_memory"]["anchors"]
    for c in range(10):
        mine = role[labels == c]
        assert 0 < len(mine) <= PER_CLASS
        assert abs(int((mine == REPLAY).sum()) - int((mine == GUARD).sum())) <= 1
    assert section["guard"] == int((role == GUARD).sum()) and section["replay"] == int((role == REPLAY).sum())
    # The recorded accuracies are the checkpoint's own on each half (not any figure in [0, 1]).
    from edge_sel.models import load_checkpoint
    net, c = load_checkpoint(out)
    mean = torch.tensor(c.mean).view(1, -1, 1, 1)
    std = torch.tensor(c.std).view(1, -1, 1, 1)
    with torch.inference_mode():
        x = a["images"].float()
        x = (x / 255 if a["images"].dtype == torch.uint8 else x)
        right = net.eval()((x - mean) / std).argmax(1) == labels
    for name, r in (("guard_acc", GUARD), ("replay_acc", REPLAY)):
        assert section[name] == pytest.approx(right[role == r].float().mean().item(), abs=1.5 / int((role == r).sum()))


def test_fisher_covers_every_trainable_parameter_and_its_flops_are_counted(warm):
    out, _ = warm
    fisher, model = load_file(str(out / "fisher.safetensors")), load_file(str(out / "model.safetensors"))
    from edge_sel.models import load_checkpoint
    net, _ = load_checkpoint(out)
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert fisher.keys() == trainable.keys()
    for name, f in fisher.items():
        assert f.shape == trainable[name].shape and f.dtype == torch.float32
        assert torch.isfinite(f).all() and (f >= 0).all()
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    forward, backward = FlopCounter(net, [1, 8, 8]).eval_gradient(1)
    assert card(out)["source_memory"]["fisher"]["flops"] == (forward + backward) * FISHER_SAMPLES


class Tiny(nn.Module):
    """Grouped and plain convolutions (many positions and one), BatchNorm before an in-place ReLU,
    a Linear head."""

    def __init__(self, custom: bool = False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False),
                                      nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2),
                                      nn.Conv2d(8, 6, 2))      # one position: summed as pairs of positions
        self.head = nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.ones(3)) if custom else None   # outside any plain layer

    def forward(self, x):
        out = self.head(self.features(x).flatten(1))
        return out * self.scale if self.scale is not None else out


def tiny_data(n=20):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 2, 6, 6), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    return IndexedDataset(images, labels, torch.arange(n), ["a", "b", "c"])


@pytest.mark.parametrize("custom", [False, True])
def test_every_method_gives_the_per_sample_loops_numbers(custom):
    torch.manual_seed(0)
    model = Tiny(custom)
    with torch.no_grad():                 # running statistics that are not the defaults
        model.train()(torch.randn(16, 2, 6, 6) * 2 + 0.5)
    model.head.bias.requires_grad_(False)           # only trainable parameters get a Fisher
    data, positions = tiny_data(), torch.arange(20)
    loop = diagonal_fisher(model, data, positions, [100.0, 120.0], [60.0, 50.0], method="loop")
    assert model.training          # the mode is restored
    methods = ["vmap"] + ([] if custom else ["per-layer"])
    for method in methods:
        other = diagonal_fisher(model, data, positions, [100.0, 120.0], [60.0, 50.0], method=method)
        assert other.fisher.keys() == loop.fisher.keys() and "head.bias" not in loop.fisher
        for name in loop.fisher:
            torch.testing.assert_close(other.fisher[name], loop.fisher[name], rtol=1e-4, atol=1e-9)
    auto = diagonal_fisher(model, data, positions, [100.0, 120.0], [60.0, 50.0])
    assert auto.method == ("vmap" if custom else "per-layer")


def test_same_seed_same_bytes(warm, tmp_path):
    out, _ = warm
    again = tmp_path / "again"
    tiny_pretrain(again)
    for name in SOURCE_FILES:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_no_anchors_no_files_no_section(tmp_path):
    summary = tiny_pretrain(tmp_path / "none", anchors_per_class=0, epochs=0)
    assert not any((tmp_path / "none" / name).exists() for name in SOURCE_FILES)
    assert "source_memory" not in card(tmp_path / "none") and "source_memory" not in summary


def test_fisher_samples_zero_is_refused_in_one_line(tmp_path, capsys):
    code, err = run_main(["pretrain", "--dataset", "digits", "--epochs", "1", "--fisher-samples", "0",
                          "--out", tmp_path / "x"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--fisher-samples 0" in err
    assert not (tmp_path / "x").exists()


def test_finetune_carries_the_files_and_the_deployed_model_keeps_them(warm, tmp_path):
    from edge_sel.engine.night.deployed_swap import swap_in
    out, _ = warm
    run = tmp_path / "run"
    cfg = TrainConfig(epochs=1, batch_size=64, seed=1, **FIXED)
    finetune(out, DataOptions("digits", **LOCAL), cfg, run, quiet=True)
    for name in SOURCE_FILES:
        assert (run / name).read_bytes() == (out / name).read_bytes(), name
    assert card(run)["source_memory"] == card(out)["source_memory"]
    deployed = tmp_path / "deployed"
    swap_in(out, deployed)
    swap_in(run, deployed)
    for name in SOURCE_FILES:
        assert (deployed / name).read_bytes() == (run / name).read_bytes(), name
    # a run without source memory (an older checkpoint's fine-tune) leaves the deployed files
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy2(run / name, bare / name)
    swap_in(bare, deployed)
    assert (deployed / "model.json").read_bytes() == (bare / "model.json").read_bytes()
    for name in SOURCE_FILES:
        assert (deployed / name).read_bytes() == (out / name).read_bytes(), name


def test_a_checkpoint_without_the_files_still_finetunes(warm, tmp_path):
    out, _ = warm
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for name in SOURCE_FILES:
        (old / name).unlink()
    # As a checkpoint from before the memory existed, whose card says nothing of it (one that lacks
    # some of the files and keeps others is refused: tests/test_guard.py).
    meta = json.loads((old / "model.json").read_text())
    meta.pop("source_memory")
    (old / "model.json").write_text(json.dumps(meta))
    summary = finetune(old, DataOptions("digits", **LOCAL), TrainConfig(epochs=1, batch_size=64, **FIXED), tmp_path / "run",
                       quiet=True)
    assert summary["epochs_run"] == 1
    assert not any((tmp_path / "run" / name).exists() for name in SOURCE_FILES)
    assert "source_memory" not in card(tmp_path / "run")      # the card states only files the run holds


def test_a_corrupt_anchor_file_is_named_in_one_line(warm, tmp_path, capsys):
    out, _ = warm
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / ANCHORS_FILE).write_bytes(b"\x00" * 64)
    code, err = run_main(["finetune", "--checkpoint", broken, "--dataset", "digits", "--shard", "1/2", "--subset", "200",
                          "--epochs", "1", "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(broken / ANCHORS_FILE) in err
    assert not (tmp_path / "run").exists()


def test_fleet_rounds_carry_the_warmups_source_memory(warm, tmp_path):
    from edge_sel.fleet.rundir import FleetRun, read_model, round_dir
    out, _ = warm
    model, model_card = read_model(out)
    run = FleetRun(tmp_path / "fleet", {"rounds": 2})
    for r in (0, 1):
        run.write_round(r, model, model_card, {"test_acc": 0.5}, [], {}, memory_from=run.start_dir(out))
    for where in (round_dir(tmp_path / "fleet", 0), round_dir(tmp_path / "fleet", 1), tmp_path / "fleet"):
        assert card(where)["source_memory"] == card(out)["source_memory"]
        for name in SOURCE_FILES:
            assert (where / name).read_bytes() == (out / name).read_bytes(), (where, name)
    # a resumed server starts from, and carries, the last round's copy
    assert FleetRun(tmp_path / "fleet", {"rounds": 3}, resume=True).start_dir(out) == round_dir(tmp_path / "fleet", 1)


def linked_out(checkpoint, tmp_path, names):
    """`names` moved to a folder beside the checkpoint and linked back: a received directory whose
    files are links to files elsewhere on the device."""
    secret = tmp_path / "secret"
    secret.mkdir(exist_ok=True)
    for name in names:
        os.replace(checkpoint / name, secret / name)
        (checkpoint / name).symlink_to(Path("..") / "secret" / name)
    return secret


def test_a_checkpoint_whose_files_link_out_of_it_is_refused_before_anything_is_read(warm, tmp_path, capsys):
    """model.safetensors and anchors.safetensors as links to ../secret/: refused in one line naming
    the link, no run written (the old code fine-tuned with exit 0 and copied the outside bytes)."""
    out, _ = warm
    ckpt = tmp_path / "ckpt"
    shutil.copytree(out, ckpt)
    linked_out(ckpt, tmp_path, ["model.safetensors", ANCHORS_FILE])
    code, err = run_main(["finetune", "--checkpoint", ckpt, "--dataset", "digits", "--shard", "1/2", "--subset", "200",
                          "--epochs", "1", "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{ckpt / 'model.safetensors'}: a link; edge-sel follows no link" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", [ANCHORS_FILE, "model.safetensors", "model.json", "bn_bank.safetensors"])
def test_every_reader_and_the_deployed_swap_refuse_a_link_in_the_directory(warm, tmp_path, name):
    from edge_sel.core.bn_bank import read_bank
    from edge_sel.core.checkpoint import read_card, read_weights, weights_digest
    from edge_sel.core.source_memory import copy_source_memory, read_source_memory
    from edge_sel.engine.night.deployed_swap import swap_in
    from edge_sel.errors import InputError
    out, _ = warm
    ckpt = tmp_path / "ckpt"
    shutil.copytree(out, ckpt)
    if name == "bn_bank.safetensors":
        (tmp_path / "secret").mkdir()
        (tmp_path / "secret" / name).write_bytes(b"\x00" * 64)
        (ckpt / name).symlink_to(Path("..") / "secret" / name)
    else:
        linked_out(ckpt, tmp_path, [name])
    (tmp_path / "target").mkdir()
    readers = {ANCHORS_FILE: [lambda: read_source_memory(ckpt, [1, 8, 8]),
                              lambda: copy_source_memory(ckpt, tmp_path / "target")],
               "model.safetensors": [lambda: read_weights(ckpt), lambda: weights_digest(ckpt)],
               "model.json": [lambda: read_card(ckpt)],
               "bn_bank.safetensors": [lambda: read_bank(ckpt, [1, 8, 8])]}[name]
    for read in readers + [lambda: swap_in(ckpt, tmp_path / "deployed")]:
        with pytest.raises(InputError, match="a link; edge-sel follows no link"):
            read()
    assert not os.listdir(tmp_path / "target")
    assert not os.path.lexists(tmp_path / "deployed") and not os.listdir(tmp_path / ".deployed.versions")


def test_a_hard_link_is_read_as_the_file_it_is(warm, tmp_path):
    """A hard link names the file itself (made on this device by someone who can read it): read,
    and copied as bytes into what is written, never as a link (docs/threat-model.md)."""
    from edge_sel.core.source_memory import copy_source_memory
    out, _ = warm
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in SOURCE_FILES:
        os.link(out / name, ckpt / name)
    (tmp_path / "target").mkdir()
    assert copy_source_memory(ckpt, tmp_path / "target")
    for name in SOURCE_FILES:
        copied = tmp_path / "target" / name
        assert copied.read_bytes() == (out / name).read_bytes() and copied.stat().st_nlink == 1
