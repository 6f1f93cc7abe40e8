"""Shift scenarios: deterministic per sample, shape- and label-preserving corruptions whose distance
from the clean image grows with severity, per-sample label noise, long tails and class subsets."""

import pytest
import torch

from helpers import records, run_cli
from edge_sel.data.corruptions import CORRUPTIONS, corrupt
from edge_sel.data.dataset import IndexedDataset, Splits
from edge_sel.data.shift import Shift, apply_shift, flip_labels, longtail_keep, parse_shift
from edge_sel.errors import InputError


def images(n=24, channels=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth random images (blurs and pixelation must have something to change).
    base = torch.rand(n, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 200 + 20).round().to(torch.uint8)


def dataset(n=200, classes=10, channels=3, size=8):
    labels = torch.arange(n) % classes
    return IndexedDataset(images(n, channels, size), labels, torch.arange(1000, 1000 + n),
                          [f"c{i}" for i in range(classes)], "toy")


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_deterministic_per_sample_and_keep_shape(name):
    x, index = images(), torch.arange(24) + 100
    a = corrupt(x, index, name, 3, seed=5)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, corrupt(x, index, name, 3, seed=5))
    # A subset gets exactly the pixels the full set gets: draws depend on the sample id only.
    part = torch.tensor([3, 7, 20])
    assert torch.equal(corrupt(x[part], index[part], name, 3, seed=5), a[part])
    # Distance from the clean images grows with severity (pixelation's block grid aliases between
    # neighbouring sizes, so only its overall trend is monotone).
    dist = [(corrupt(x, index, name, s, seed=5).float() - x.float()).abs().mean().item() for s in range(1, 6)]
    steps = [(0, 4)] if name == "pixelate" else list(zip(range(4), range(1, 5)))
    assert dist[0] > 0 and all(dist[j] >= dist[i] - 1e-6 for i, j in steps), dist
    assert dist[-1] > dist[0]


@pytest.mark.parametrize("name", ["gaussian_noise", "gaussian_blur", "jpeg_compression", "fog", "brightness"])
def test_corruptions_work_on_small_grey_images(name):
    x = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    out = corrupt(x, torch.arange(6), name, 5)
    assert out.shape == x.shape and not torch.equal(out, x)


def test_label_noise_flips_about_the_share_and_never_to_the_same_class():
    ds = dataset(n=2000)
    noisy = flip_labels(ds, 0.2, seed=3)
    flipped = noisy.labels != ds.labels
    assert abs(int(flipped.sum()) - 400) < 4 * (2000 * 0.2 * 0.8) ** 0.5     # binomial(2000, 0.2)
    assert torch.equal(noisy.clean_labels, ds.labels)
    assert torch.equal(noisy.images, ds.images) and torch.equal(noisy.index, ds.index)
    # New labels spread over the other classes.
    assert len(set(noisy.labels[flipped].tolist())) == 10
    assert flip_labels(ds, 0.0, seed=3).labels.equal(ds.labels)


@pytest.mark.parametrize("take", [slice(None, None, 3), slice(250, 1250), slice(1, None, 2)])
def test_a_shard_flips_exactly_the_full_sets_flips_of_its_samples(take):
    """A device holding a shard or a subset of the data gets the labels those samples have in the
    flipped full set, whatever else the full set holds."""
    ds = dataset(n=2000)
    full = flip_labels(ds, 0.2, seed=3)
    positions = torch.arange(len(ds))[take]
    shard = flip_labels(ds.subset(positions), 0.2, seed=3)
    assert torch.equal(shard.labels, full.labels[positions])
    assert int((shard.labels != shard.clean_labels).sum()) > 0


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise"])
def test_test_images_do_not_share_the_training_images_noise_fields(name):
    """Training and test sets both number their images from 0: test image i must not get training
    image i's noise (the same clean picture would come out identical in both splits)."""
    splits = Splits(dataset(), dataset(), dataset())       # one picture under the same id in every split
    shifted = apply_shift(splits, parse_shift(f"corrupt={name}:3"), seed=5)
    assert torch.equal(shifted.train.images, shifted.val.images)          # one pool, one numbering
    assert not torch.equal(shifted.train.images, shifted.test.images)
    x, index = images(n=6), torch.arange(6)
    train = corrupt(x, index, name, 3, seed=5)
    test = corrupt(x, index, name, 3, seed=5, pool="test")
    assert all(not torch.equal(train[i], test[i]) for i in range(6))
    assert torch.equal(corrupt(x[2:4], index[2:4], name, 3, seed=5, pool="test"), test[2:4])


def test_long_tail_follows_its_profile_and_class_subsets_keep_only_those_classes():
    ds = dataset(n=1000)
    kept = ds.subset(longtail_keep(ds, 100.0, seed=0))
    counts = kept.class_counts()
    assert counts[0] == 100 and counts[-1] == 1
    assert counts == sorted(counts, reverse=True)
    splits = Splits(dataset(), dataset(), dataset())
    shifted = apply_shift(splits, parse_shift("classes=1,3"), seed=0)
    assert set(shifted.train.labels.tolist()) == {1, 3} and set(shifted.test.labels.tolist()) == {1, 3}
    assert len(shifted.test_clean) == len(splits.test)


def test_apply_shift_corrupts_every_split_and_keeps_the_clean_test():
    splits = Splits(dataset(), dataset(), dataset())
    shifted = apply_shift(splits, parse_shift("corrupt=gaussian_noise:3;label-noise=0.1"), seed=0)
    for name in ("train", "val", "test"):
        assert not torch.equal(getattr(shifted, name).images, getattr(splits, name).images)
    flipped = int((shifted.train.labels != splits.train.labels).sum())
    assert 0 < flipped < 60                                                  # about 20 of 200
    assert torch.equal(shifted.val.labels, splits.val.labels)                 # ':val' not given
    assert shifted.test_clean is splits.test
    assert apply_shift(splits, Shift(), seed=0) is splits


@pytest.mark.parametrize("spec", ["corrupt=snow:3", "corrupt=fog:9", "label-noise=1.5", "label-noise=0.2:test",
                                  "imbalance=square:3", "classes=", "wobble", "fog=3"])
def test_bad_specs_are_input_errors(spec):
    with pytest.raises(InputError, match="--shift"):
        parse_shift(spec)


def test_a_shifted_fine_tune_records_accuracy_on_the_clean_test_too(tiny_warm, tmp_path):
    out = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1", "--out", out,
            "--shift", "corrupt=contrast:5", "--quiet")
    base, epoch = records(out, baseline=True)
    assert base["clean_test_acc"] is not None and epoch["clean_test_acc"] is not None
    assert base["clean_test_acc"] != base["test_acc"]
    result = run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "1",
                     "--out", tmp_path / "bad", "--shift", "corrupt=snow:3", "--quiet", expect=2)
    assert result.output.strip().startswith("edge-sel: error: --shift:")


def test_the_shift_command_writes_a_folder_that_loads_back(tmp_path):
    from edge_sel.data import load_source
    from edge_sel.predict.images import list_images
    out = tmp_path / "shifted"
    result = run_cli("shift", "--dataset", "digits", "--shift", "corrupt=gaussian_noise:5;label-noise=0.2",
                     "--limit", "5", "--out", out)
    assert "wrote 50 train images, 50 test images" in result.output
    assert (out / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    # Files a folder picks up that are not its images: a hidden one, macOS's resource fork (an image
    # suffix, no image), in a hidden folder. They and the contact sheet used to stop predict.
    (out / "train" / "3" / ".hidden.jpg").write_bytes(b"not an image")
    (out / "test" / "7" / "._000007.png").write_bytes(b"\x00\x05\x16\x07resource fork")
    (out / ".thumbnails").mkdir()
    (out / ".thumbnails" / "a.png").write_bytes((out / "contact_sheet.png").read_bytes())
    with pytest.warns(UserWarning) as said:
        train, test = load_source(f"folder:{out}")
    assert [str(w.message) for w in said] == [f"{out / 'train'}: 1 file skipped, not input images: 1 hidden "
                                              "(3/.hidden.jpg)",
                                              f"{out / 'test'}: 1 file skipped, not input images: 1 hidden "
                                              "(7/._000007.png)"]
    assert len(train) == 50 and len(test) == 50 and train.class_names == [str(d) for d in range(10)]
    assert train.class_counts() == [5] * 10
    with pytest.warns(UserWarning) as said:
        images = list_images([out])
    assert len(images) == 100 and not any(p.name.startswith(".") or p.name == "contact_sheet.png" for p in images)
    assert str(said[0].message) == (f"{out}: 4 files skipped, not input images: 3 hidden (.thumbnails/a.png, "
                                    "test/7/._000007.png, train/3/.hidden.jpg); 1 edge-sel's own output "
                                    "(contact_sheet.png)")
    assert list_images([out / "contact_sheet.png"]) == [out / "contact_sheet.png"]     # named: read
    run_cli("shift", "--dataset", "digits", "--shift", "corrupt=snow:1", "--out", tmp_path / "bad", expect=2)
    assert not (tmp_path / "bad").exists()
