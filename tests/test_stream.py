"""A camera's stream: frames of a scene never cross splits and are deterministic per id, the novelty
signal sees duplicates, its cost is counted, and a novelty-gated stream run resumes exactly."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gating_helpers import novelty_gate_on, stripes
from helpers import SAME_CHOICES, records, run_cli, stable
from edge_sel.data.dataset import IndexedDataset
from edge_sel.data.frames import render_frames, scene_of, stream_positions
from edge_sel.data.shift import apply_shift, parse_shift
from edge_sel.data.split import make_splits
from edge_sel.errors import InputError
from edge_sel.methods.base import Plan
from edge_sel.methods.select.novelty import NoveltyMemory, fingerprint_flops, fingerprints, to_novelty

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(n=120, classes=4, size=16, seed=0, first_id=500):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return IndexedDataset((x * 200 + 20).round().to(torch.uint8), torch.arange(n) % classes,
                          torch.arange(first_id, first_id + n), [f"c{i}" for i in range(classes)], "toy")


def test_frames_of_a_scene_never_cross_splits():
    full, test = toy(160), toy(40, seed=1, first_id=5000)
    splits = apply_shift(make_splits(full, test, val_fraction=0.25, shard_kn=(1, 2)), parse_shift("frames=6"), seed=3)
    train_scenes = set(scene_of(splits.train).tolist())
    assert len(splits.train) == 6 * len(train_scenes)           # every frame of every training scene
    assert train_scenes.isdisjoint(scene_of(splits.val).tolist())
    assert train_scenes.isdisjoint(scene_of(splits.test).tolist())
    # Validation and test: one frame per scene, each scene's label kept (the test split checked as well:
    # a test split holding every frame of its scenes passed when only validation was).
    assert len(splits.val) == len(set(scene_of(splits.val).tolist())) == 40
    assert len(splits.test) == 40 and sorted(scene_of(splits.test).tolist()) == test.index.tolist()
    by_id = dict(zip(full.index.tolist(), full.labels.tolist()))
    assert all(by_id[s] == y for s, y in zip(scene_of(splits.train).tolist(), splits.train.labels.tolist()))
    test_by_id = dict(zip(test.index.tolist(), test.labels.tolist()))
    assert all(test_by_id[s] == y for s, y in zip(scene_of(splits.test).tolist(), splits.test.labels.tolist()))
    dedup = apply_shift(make_splits(full, test, val_fraction=0.25, shard_kn=(1, 2)), parse_shift("frames=6:dedup"), 3)
    assert sorted(scene_of(dedup.train).tolist()) == sorted(train_scenes)


def test_frames_are_deterministic_per_id_and_near_duplicates():
    ds = toy(30)
    frames = apply_shift(make_splits(ds, toy(8, seed=1), val_fraction=0.0), parse_shift("frames=5"), seed=2).train
    again = apply_shift(make_splits(ds, toy(8, seed=1), val_fraction=0.0), parse_shift("frames=5"), seed=2).train
    assert torch.equal(frames.images, again.images) and torch.equal(frames.index, again.index)
    # A frame's bytes depend on its id only, not on which other frames are made with it.
    pick = torch.tensor([7, 21, 33])
    scene_rows = torch.tensor([(int(frames.index[i]) // 5) - 500 for i in pick])
    alone = render_frames(ds.images[scene_rows], frames.index[pick], 5, seed=2)
    assert torch.equal(alone, frames.images[pick])
    # Frames of one scene differ (motion, noise) but stay far closer to each other than to other scenes.
    first = frames.images[:5].float()
    assert (first[1:] != first[0]).any()
    other = frames.images[5:10].float()
    assert (first - first[0]).abs().mean() < 0.5 * (other - first[0]).abs().mean()
    with pytest.raises(InputError, match="frames"):
        parse_shift("frames=1")
    with pytest.raises(InputError, match="frames"):
        parse_shift("frames=4:sideways")


def test_scene_order_keeps_a_scenes_frames_together():
    ds = apply_shift(make_splits(toy(20), toy(4, seed=1), val_fraction=0.0), parse_shift("frames=4"), 0).train
    order = stream_positions(ds, torch.Generator().manual_seed(1))
    ids = ds.index[order].tolist()
    assert sorted(order.tolist()) == list(range(len(ds)))
    assert all(ids[i + 1] == ids[i] + 1 for i in range(0, len(ids), 4) for i in range(i, i + 3))
    shuffled = apply_shift(make_splits(toy(20), toy(4, seed=1), val_fraction=0.0), parse_shift("frames=4:shuffled"), 0).train
    ids = shuffled.index[stream_positions(shuffled, torch.Generator().manual_seed(1))].tolist()
    assert sum(a // 4 == b // 4 for a, b in zip(ids, ids[1:])) < 10


def test_novelty_scores_a_duplicate_redundant_and_a_new_scene_novel():
    scenes = stripes()
    x = torch.stack([scenes[0], scenes[0], scenes[1]])      # a scene, its exact duplicate, another scene
    prints = fingerprints(x)
    memory = NoveltyMemory(prints.shape[1], size=4)
    memory.remember(prints[:1])
    nearest, flops = memory.nearest(prints[1:])
    novelty = to_novelty(nearest)
    assert novelty[0].item() == pytest.approx(0.0, abs=1e-4) and novelty[1].item() == pytest.approx(1.0)
    assert flops == 2 * 2 * 1 * prints.shape[1]


def test_novelty_gate_keeps_one_frame_of_each_duplicated_scene_and_counts_its_cost():
    # Four scenes, each four exact duplicates in a row; never trained, so loss significance is 1 for all.
    gate, charged = novelty_gate_on(0.25)
    passes = decision_passes(gate)
    plan = gate.select(0, Plan(torch.arange(16)))
    assert sorted((plan.positions // 4).tolist()) == [0, 1, 2, 3]       # one frame per scene
    # Charged as scoring work: the fingerprints, the memory and in-window comparisons, and every
    # pass of the window's decisions (the threshold's bisection reruns them: 2 x 16 + 1).
    d = 2 * 4 * 4
    assert len(passes) == 33
    expected = fingerprint_flops(16, [3, 8, 8]) + 2 * 16 * 16 * d + decided(gate, passes)
    assert charged == [(0, expected)] and plan.info["novelty_flops"] == expected
    # The next epoch compares with the remembered frames: every candidate is now a duplicate.
    passes.clear()
    plan = gate.select(1, Plan(torch.arange(16)))
    assert charged[1][1] == fingerprint_flops(16, [3, 8, 8]) + 2 * 16 * 16 * d + 2 * 16 * 4 * d + decided(gate, passes)
    assert len(plan.positions) == 0 and plan.info["novelty_kept_mean"] is None


def decision_passes(gate) -> list[tuple[int, int]]:
    """(candidates, kept) of every pass of a window's decisions the gate makes from now on."""
    passes, decide = [], gate._decide

    def counted(sig, *args):
        keep, novelty, p = decide(sig, *args)
        passes.append((len(sig), int(keep.sum())))
        return keep, novelty, p
    gate._decide = counted
    return passes


def decided(gate, passes) -> int:
    from edge_sel.methods.select.sundew import decision_flops
    return sum(decision_flops(n, k, gate.cfg.gate_temperature, gate.cfg.unbiased) for n, k in passes)


def test_a_novelty_top_up_counts_its_comparisons():
    """Before: the top-up's novelty and scores, one pass per frame added, were not counted."""
    from edge_sel.methods.select.sundew import top_up_flops
    gate, charged = novelty_gate_on(0.5, min_activation=0.5)
    passes = decision_passes(gate)
    plan = gate.select(0, Plan(torch.arange(16)))
    kept_by_decisions = passes[-1][1]
    assert len(plan.positions) == 8 > kept_by_decisions            # four scenes, so four frames topped up
    d = 2 * 4 * 4
    assert charged[0][1] == (fingerprint_flops(16, [3, 8, 8]) + 2 * 16 * 16 * d + decided(gate, passes)
                             + top_up_flops(16, kept_by_decisions, 8 - kept_by_decisions))


def test_novelty_gate_holds_its_activation_target_on_a_redundant_stream():
    ds = apply_shift(make_splits(toy(400), toy(4, seed=1), val_fraction=0.0), parse_shift("frames=10"), 0).train
    gate, _ = novelty_gate_on(ds=ds, target=0.1, gate_temperature=0.05, min_activation=0.05)
    order = stream_positions(ds, torch.Generator().manual_seed(0))
    rates = [len(gate.select(e, Plan(order)).positions) / len(ds) for e in range(2)]
    assert all(abs(r - 0.1) < 0.02 for r in rates), rates


@pytest.mark.parametrize("target", [0.05, 0.03])
def test_novelty_gate_at_or_below_its_floor_holds_the_target_across_scenes(target):
    """A target at or below --min-activation: the per-window floor once kept more than the target in
    every window (0.067 at 0.05 on CIFAR-10 frames). Both bounds: a gate that keeps nothing passed an
    upper bound alone. (Windows of 16 here ask no floor; the top-up is tested below.)"""
    ds = apply_shift(make_splits(toy(400), toy(4, seed=1), val_fraction=0.0), parse_shift("frames=10"), 0).train
    gate, _ = novelty_gate_on(ds=ds, target=target, gate_temperature=0.05, min_activation=0.05)
    order = stream_positions(ds, torch.Generator().manual_seed(0))
    for e in range(2):
        kept = gate.select(e, Plan(order)).positions
        assert round(target * len(ds) * 0.9) <= len(kept) <= round(target * len(ds) * 1.1), (e, len(kept))
        scenes = scene_of(ds)[kept]
        assert len(set(scenes.tolist())) >= 0.9 * len(kept)       # near-duplicates are not taken twice


def gratings(freqs, size=16) -> torch.Tensor:
    """One grating per (fx, fy): scenes whose prints are far apart (cosine below 0.6)."""
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    g = [(0.5 + 0.4 * torch.cos(2 * torch.pi * (fx * xx + fy * yy) / size)).expand(3, size, size) for fx, fy in freqs]
    return (torch.stack(g) * 255).round().to(torch.uint8)


def test_novelty_floor_tops_up_one_frame_of_each_scene():
    """Never-trained frames all score 1, so the window's share jumps from none to every scene (8 of
    32 > the 0.2 target): the gate keeps nothing and the floor (6) takes the rest, one frame per scene.
    Mutations this catches: `floor = 0` (nothing kept), and the top-up replaced by a plain top-k of the
    window's significance (it took frames of scenes 4 and 5 twice: scene-mates tie with each other)."""
    scenes = gratings([(1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 1), (1, 2), (3, 0)])
    ds = IndexedDataset(scenes.repeat_interleave(4, 0), torch.arange(32) % 2, torch.arange(32), ["a", "b"])
    gate, _ = novelty_gate_on(ds=ds, target=0.2, min_activation=0.2, gate_window=2)       # one window of 32
    plan = gate.select(0, Plan(torch.arange(32)))
    assert plan.info["threshold_start"] > 1.0                # the gate's own decisions keep nothing ...
    assert plan.positions.tolist() == [0, 4, 8, 12, 16, 20]  # ... the top-up: the first frame of six scenes


STREAM = ["--dataset", "synthetic", "--subset", "40", "--shift", "frames=4", "--strategy", "sundew",
          "--novelty", "1", "--target-activation", "0.3", "--epochs", "3", "--batch-size", "16",
          "--checkpoint-every", "2", "--lr", "0.02", "--quiet", "--seed", "5", *SAME_CHOICES]


# One torch thread, as the reference run in this process has (the same floating-point sums).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def stream_run(warm, out, env=None):
    argv = [sys.executable, "-m", "edge_sel", "finetune", "--checkpoint", str(warm), "--out", str(out), *STREAM]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **ONE_THREAD, **(env or {})})


def test_a_stream_run_resumes_exactly_after_sigkill(tiny_warm, tmp_path):
    run_cli("finetune", "--checkpoint", tiny_warm, "--out", tmp_path / "reference", *STREAM)
    ref = stable(records(tmp_path / "reference"))
    assert len(ref) == 3 and all(r["flops_scoring"] > 0 and r["novelty_flops"] == r["flops_scoring"] for r in ref)
    out = tmp_path / "killed"
    killed = stream_run(tiny_warm, out, {"EDGE_SEL_FAULT_KILL_AT_STEP": "5"})   # inside the second epoch
    assert killed.returncode == -9 and len(records(out)) == 1
    resumed = subprocess.run([sys.executable, "-m", "edge_sel", "finetune", "--resume", str(out), "--quiet"],
                             capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    assert resumed.returncode == 0, resumed.stderr
    assert stable(records(out)) == ref


def test_bench_stream_quick_run(tmp_path):
    out = tmp_path / "bench"
    run_cli("bench", "stream", "--quick", "--scenarios", "noise", "--methods", "random,sundew-novelty,one-per-scene",
            "--subset", "60", "--frames", "4", "--pretrain-epochs", "1", "--quiet", "--out", out)
    bench = json.loads((out / "bench.json").read_text())
    rows = bench["results"]["noise"]
    assert bench["dataset"] == "digits" and bench["seeds"] == [0, 1] and all(len(v) == 2 for v in rows.values())
    for seed in (0, 1):
        control, gate, ceiling = (rows[f"{m}@0.1"][seed] for m in ("random", "sundew-novelty", "one-per-scene"))
        # Same backward passes: 0.1 x 4 frames of 60 scenes, and one frame of 24 scenes of the 60.
        assert abs(gate["flops_train"] - control["flops_train"]) / control["flops_train"] < 0.15
        assert ceiling["flops_train"] == pytest.approx(control["flops_train"], rel=0.05)
        assert gate["flops_scoring"] > 0 and control["flops_scoring"] == 0
        assert ceiling["coverage"] == pytest.approx(0.4, abs=0.02) and 0 < control["coverage"] <= 0.4
    names = [(c["a"], c["b"]) for c in bench["comparisons"]["noise"]]
    assert ("sundew-novelty@0.1", "random@0.1") in names and ("one-per-scene@0.1", "random@0.1") in names
    assert (out / "stream.png").stat().st_size > 1000 and "scene coverage" in (out / "table.md").read_text()
    page = (out / "report.html").read_text()
    assert "<pre>" not in page and "|---|" not in page and page.count("<table>") == 2     # results, paired
    assert "<th>method</th>" in page and "<img src=\"stream.png\"" in page


def test_bench_stream_help_says_what_it_runs():
    text = " ".join(run_cli("bench", "stream", "--help").output.split())
    assert "--systems" not in text and "[10; --quick: 2]" in text and "2 seeds" in text
    assert "number of scenes" in text and "fine-tuning samples" not in text
    assert "No such option" in run_cli("bench", "stream", "--systems", "x", expect=2).output


def test_bench_stream_accuracy_axis_stays_within_0_and_100(tmp_path, monkeypatch):
    import matplotlib.figure
    from edge_sel.bench import stream
    limits = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: limits.extend(ax.get_ylim() for ax in fig.axes))
    # Two seeds far apart: the 95% interval of their mean reaches far below 0.
    rows = [{"test_acc": 0.02, "coverage": 0.5}, {"test_acc": 0.6, "coverage": 0.5}]
    stream.plot({"results": {"noise": {"random@0.1": rows}}, "activations": [0.1]}, tmp_path)
    assert limits and all(low >= 0 and high <= 100 for low, high in limits)


def test_bench_stream_refuses_an_unknown_method(tmp_path):
    result = run_cli("bench", "stream", "--quick", "--methods", "magic", "--out", tmp_path / "b", expect=2)
    assert "--methods" in result.output and "Traceback" not in result.output


def test_trigger_keeps_the_budget_and_covers_more_scenes_than_random(tiny_warm, tmp_path):
    from edge_sel.data.write_folder import write_image_folder
    # Scenes of the tiny warmup's shape (3 x 16 x 16, four classes), each two gratings of its own
    # spatial frequencies (distinct spectra), as an image folder.
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    images = []
    for _ in range(120):
        f = torch.randint(0, 3, (2, 2), generator=g).float() + torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # in the print
        phase = torch.rand(2, generator=g) * 6.28
        img = sum(torch.cos(2 * torch.pi * (f[i, 0] * xx + f[i, 1] * yy) / 16 + phase[i]) for i in range(2))
        images.append((0.5 + 0.2 * img).clamp(0, 1).expand(3, 16, 16))
    scenes = IndexedDataset((torch.stack(images) * 255).round().to(torch.uint8), torch.arange(120) % 4,
                            torch.arange(120), [f"c{i}" for i in range(4)], "gratings")
    write_image_folder(scenes, tmp_path / "scenes")
    out = tmp_path / "trigger"
    result = run_cli("trigger", "--checkpoint", tiny_warm, "--dataset", f"folder:{tmp_path / 'scenes'}",
                     "--shift", "frames=6", "--budget-frames", "40", "--out", out)
    report = json.loads((out / "trigger.json").read_text())
    assert report["kept"] == 40 and report["frames_seen"] == 6 * report["scenes_seen"]
    # Redundant frames pass up: more distinct scenes than random choices of 40 cover on average
    # (a 2-pixel move is an eighth of these 16-pixel scenes, so some scene-mates still look new).
    assert report["scenes_covered"] >= report["random_same_size"]["mean"] + 2
    rows = (out / "kept.csv").read_text().splitlines()
    assert rows[0] == "stream_position,frame_id,scene,significance" and len(rows) == 41
    cost = report["cost"]
    assert cost["flops_forward"] == 0 and cost["flops_novelty"] > 0 and cost["energy_method"]   # novelty alone
    # With the model's entropy: one counted forward pass per frame on top.
    run_cli("trigger", "--checkpoint", tiny_warm, "--dataset", f"folder:{tmp_path / 'scenes'}", "--shift", "frames=6",
            "--budget-frames", "40", "--significance", "entropy", "--out", tmp_path / "entropy")
    cost = json.loads((tmp_path / "entropy" / "trigger.json").read_text())["cost"]
    assert cost["flops_forward"] > 0 and cost["flops_total"] == cost["flops_forward"] + cost["flops_novelty"]
    assert "scenes" in result.output and "GFLOP" in result.output
    bad = run_cli("trigger", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--out", tmp_path / "b", expect=2)
    assert "--budget-frames" in bad.output and not (tmp_path / "b").exists()
