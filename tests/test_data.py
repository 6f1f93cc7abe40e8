import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR_JPEG, needs_cifar
from edge_sel.data import load_source, make_splits, parse_shard
from edge_sel.data import folder as folder_mod
from edge_sel.data.augment import augment_batch, augment_by_sample, random_crop, random_flip
from edge_sel.data.corruptions import corrupt
from edge_sel.data.loader import BatchLoader
from edge_sel.data.resize import resize_pixels
from edge_sel.engine.runs.data_options import DataOptions, vars_of
from edge_sel.predict.images import read_image
from edge_sel.data.split import shard, stratified_take
from edge_sel.errors import InputError


def write_tree(root, classes=("cat", "dog", "eel"), per_class=5, size=(12, 10), fmt="png"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.{fmt}")
    return root


def test_digits_is_real_and_split_into_train_and_test():
    train, test = load_source("digits")
    assert len(train) + len(test) == 1797
    assert train.images.dtype == torch.uint8 and train.input_shape == [1, 8, 8]
    assert train.class_names == [str(i) for i in range(10)]
    assert int(train.images.max()) == 255
    # Held-out test ids never appear in train; ids are the original row numbers.
    assert not set(train.index.tolist()) & set(test.index.tolist())


def test_synthetic_is_deterministic():
    a, _ = load_source("synthetic")
    b, _ = load_source("synthetic")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_stratified_val_split_is_deterministic_and_disjoint():
    train_full, test = load_source("digits")
    s1 = make_splits(train_full, test, val_fraction=0.1, split_seed=0)
    s2 = make_splits(train_full, test, val_fraction=0.1, split_seed=0)
    assert torch.equal(s1.val.index, s2.val.index)
    assert not set(s1.train.index.tolist()) & set(s1.val.index.tolist())
    assert len(s1.train) + len(s1.val) == len(train_full)
    full_counts = train_full.class_counts()
    for c, n_val in enumerate(s1.val.class_counts()):
        assert abs(n_val - 0.1 * full_counts[c]) <= 1
    other = make_splits(train_full, test, val_fraction=0.1, split_seed=1)
    assert not torch.equal(s1.val.index, other.val.index)


def test_shards_are_disjoint_cover_and_share_validation():
    train_full, test = load_source("digits")
    a = make_splits(train_full, test, shard_kn=(0, 2))
    b = make_splits(train_full, test, shard_kn=(1, 2))
    whole = make_splits(train_full, test)
    assert torch.equal(a.val.index, b.val.index)
    ia, ib = set(a.train.index.tolist()), set(b.train.index.tolist())
    assert not ia & ib and ia | ib == set(whole.train.index.tolist())
    assert abs(len(a.train) - len(b.train)) <= 10


def test_subset_and_cap_keep_classes_balanced():
    train_full, test = load_source("digits")
    s = make_splits(train_full, test, subset=200)
    assert len(s.train) == 200
    assert max(s.train.class_counts()) - min(s.train.class_counts()) <= 2
    capped = make_splits(train_full, test, per_class_cap=7)
    assert capped.train.class_counts() == [7] * 10
    assert len(stratified_take(train_full, total=50)) == 50
    with pytest.raises(InputError, match="--subset"):
        make_splits(train_full, test, subset=0)


@pytest.mark.parametrize("text", ["2/2", "a/b", "1", "-1/3"])
def test_bad_shard_is_an_input_error(text):
    with pytest.raises(InputError, match="--shard"):
        parse_shard(text)


def test_shard_positions_partition():
    train_full, _ = load_source("digits")
    parts = [set(shard(train_full, k, 3, seed=0).tolist()) for k in range(3)]
    assert sum(len(p) for p in parts) == len(train_full)
    assert set().union(*parts) == set(range(len(train_full)))


def test_image_folder_with_train_and_test(tmp_path):
    write_tree(tmp_path / "train", per_class=6)
    write_tree(tmp_path / "test", per_class=2)
    train, test = load_source(f"folder:{tmp_path}")
    assert train.images.shape == (18, 3, 10, 12) and test.images.shape == (6, 3, 10, 12)
    assert train.class_names == ["cat", "dog", "eel"]
    assert train.class_counts() == [6, 6, 6]
    # Pixels survive decoding exactly (PNG is lossless).
    first = np.asarray(Image.open(tmp_path / "train" / "cat" / "000.png"))
    assert np.array_equal(train.images[0].permute(1, 2, 0).numpy(), first)


def _key_args(train_root):
    """What the training folder's cache key is made of."""
    _, files = folder_mod.list_class_folder(train_root)
    return train_root, files, None


def test_image_folder_cache_makes_second_load_skip_decoding(tmp_path, monkeypatch):
    write_tree(tmp_path / "data", per_class=4)
    first, _ = load_source(f"folder:{tmp_path / 'data'}")

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite a cache")
    monkeypatch.setattr(folder_mod, "_decode_all", no_decoding)
    second, _ = load_source(f"folder:{tmp_path / 'data'}")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    # The cache is mapped, not read whole, and copy-on-write: a write into the images stays in this process.
    root = tmp_path / "data"
    mapped = folder_mod.load_class_folder(root, "d")
    cached = folder_mod.cache_file(*_key_args(root))
    assert str(cached) in Path("/proc/self/maps").read_text()
    on_disk = cached.read_bytes()
    mapped.images[0].fill_(7)
    assert cached.read_bytes() == on_disk and folder_mod.load_class_folder(root, "d").images[0].ne(7).any()
    monkeypatch.undo()
    cached.write_bytes(on_disk[: len(on_disk) // 2])      # a torn cache is decoded again, not trusted
    assert torch.equal(folder_mod.load_class_folder(root, "d").images,
                       torch.from_numpy(np.array(folder_mod.read_cache(cached, 12))))
    assert cached.read_bytes() == on_disk
    monkeypatch.setattr(folder_mod, "_decode_all", no_decoding)
    # Adding a file changes the key, so the stale cache is not used.
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "data" / "cat" / "999.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_source(f"folder:{tmp_path / 'data'}")


def test_an_image_edited_in_place_is_decoded_again(tmp_path):
    """The old key (names and folder mtimes) missed an image rewritten in place: its folder's mtime
    does not change, and the run trained on the old pixels."""
    write_tree(tmp_path / "d", per_class=2)
    root = tmp_path / "d"
    first = folder_mod.load_class_folder(root, "d")
    folder_time = os.stat(root / "cat").st_mtime_ns
    Image.fromarray(np.full((10, 12, 3), 201, np.uint8)).save(root / "cat" / "000.png")     # same name
    os.utime(root / "cat", ns=(folder_time, folder_time))
    again = folder_mod.load_class_folder(root, "d")
    assert int(again.images[0].min()) == int(again.images[0].max()) == 201
    assert not torch.equal(first.images[0], again.images[0]) and torch.equal(first.images[1:], again.images[1:])


@pytest.mark.parametrize("how", ["in_place", "replaced"])
def test_an_image_rewritten_at_its_size_with_its_old_mtime_is_decoded_again(tmp_path, how):
    """cp -p, rsync -t and tar x write new bytes and set the old modification time back: a BMP of
    the same size and mtime loaded its stale pixels from a key of names, sizes and mtimes. In place
    (cp -p) the inode stays and the change time moves; replaced (tar x, rsync) the inode changes."""
    root = write_tree(tmp_path / "d", classes=("cat", "dog"), per_class=2, fmt="bmp")
    image = root / "cat" / "000.bmp"
    first = folder_mod.load_class_folder(root, "d")
    old = os.stat(image)
    new = tmp_path / "new.bmp"
    Image.fromarray(np.full((10, 12, 3), 77, np.uint8)).save(new)
    if how == "in_place":
        with open(image, "r+b") as f:
            f.write(new.read_bytes())
    else:
        os.replace(new, image)
    os.utime(image, ns=(old.st_atime_ns, old.st_mtime_ns))
    while os.stat(image).st_ctime_ns == old.st_ctime_ns:       # a clock coarser than the rewrite: tick it
        time.sleep(0.01)
        os.utime(image, ns=(old.st_atime_ns, old.st_mtime_ns))
    now = os.stat(image)
    assert (now.st_size, now.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    again = folder_mod.load_class_folder(root, "d")
    assert int(again.images[0].min()) == int(again.images[0].max()) == 77
    assert not torch.equal(first.images[0], again.images[0]) and torch.equal(first.images[1:], again.images[1:])


def test_an_image_rewritten_at_the_same_size_is_decoded_again(tmp_path):
    """Killed the mutant that keys the cache without the files' modification times: the edit above
    also changes the file's size, which the key holds too. A BMP keeps its size whatever its pixels;
    the rewrite keeps the file (its inode) and its folder's times, and moves its own mtime on by a
    second (as any later write does, where a clock's tick could otherwise give the same time)."""
    write_tree(tmp_path / "d", per_class=2, fmt="bmp")
    root, image = tmp_path / "d", tmp_path / "d" / "cat" / "000.bmp"
    first = folder_mod.load_class_folder(root, "d")
    before, folder_time = os.stat(image), os.stat(root / "cat").st_mtime_ns
    Image.fromarray(np.full((10, 12, 3), 201, np.uint8)).save(image)          # in place: same name, same file
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    os.utime(root / "cat", ns=(folder_time, folder_time))
    after = os.stat(image)
    assert (after.st_size, after.st_ino) == (before.st_size, before.st_ino)
    again = folder_mod.load_class_folder(root, "d")
    assert int(again.images[0].min()) == int(again.images[0].max()) == 201
    assert not torch.equal(first.images[0], again.images[0]) and torch.equal(first.images[1:], again.images[1:])


def test_a_cache_whose_second_half_is_zeroed_is_rebuilt_with_one_line(tmp_path, capsys):
    """A rename without an fsync before it leaves, after a power loss, a file of the right size whose
    end is zeros: the old cache loaded it as valid ("last image max pixel: 0")."""
    write_tree(tmp_path / "d", per_class=2)
    root = tmp_path / "d"
    before = set(folder_mod.cache_dir().glob("folder-*"))
    first = folder_mod.load_class_folder(root, "d")
    [cached] = set(folder_mod.cache_dir().glob("folder-*")) - before
    data = bytearray(cached.read_bytes())
    half = len(data) - first.images.numel() // 2            # the images' second half: the file's end
    data[half:] = bytes(len(data) - half)
    cached.write_bytes(bytes(data))
    capsys.readouterr()
    again = folder_mod.load_class_folder(root, "d")
    assert torch.equal(again.images, first.images) and int(again.images[-1].max()) > 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edge-sel: {cached}: damaged decoded-image cache (its images do not match its digest); "
                   f"decoding {root} again"]
    assert folder_mod.read_cache(cached, len(first.labels)).tobytes() == first.images.numpy().tobytes()   # rewritten whole


def test_empty_class_folder_names_the_folder(tmp_path):
    write_tree(tmp_path / "d", per_class=2)
    (tmp_path / "d" / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: class folder has no images"):
        load_source(f"folder:{tmp_path / 'd'}")


def test_corrupt_image_names_the_file(tmp_path):
    write_tree(tmp_path / "d", per_class=2, fmt="jpg")
    (tmp_path / "d" / "dog" / "001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(InputError, match=r"dog/001\.jpg: cannot decode"):
        load_source(f"folder:{tmp_path / 'd'}")


def test_mixed_image_sizes_ask_for_image_size(tmp_path, monkeypatch):
    write_tree(tmp_path / "d", per_class=2)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "d" / "eel" / "big.png")
    with pytest.raises(InputError, match="--image-size"):
        load_source(f"folder:{tmp_path / 'd'}")
    train, test = load_source(f"folder:{tmp_path / 'd'}", image_size=8)
    assert train.input_shape == [3, 8, 8]
    # No one array holds mixed sizes at their own: such a folder is decoded at the run's size, and
    # cached so (a second load decodes nothing).
    assert train.images.shape[-2:] == (8, 8) and train.size is None

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite a cache")
    monkeypatch.setattr(folder_mod, "_decode_all", no_decoding)
    again, _ = load_source(f"folder:{tmp_path / 'd'}", image_size=8)
    assert torch.equal(again.images, train.images)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_run_holds_images_at_their_own_size_and_batches_are_the_files_resized(tmp_path, fmt):
    """--image-size 64 on a folder of 32 px images: the run holds them at 32 px, and what a model
    is given (training and evaluation batches, `predict --resize` of the same file) is each file
    resized with antialiasing, equal to PIL's bilinear resize of the file to one level of uint8:
    PIL rounds to uint8 between its two passes (measured: at most 1 apart, 26% of the pixels of
    these random images; never 2)."""
    root = write_tree(tmp_path / "d", per_class=2, size=(32, 32), fmt=fmt)
    data = DataOptions(f"folder:{root}", image_size=64, val_fraction=0)
    splits = data.load()
    train = splits.train
    assert train.images.shape[1:] == (3, 32, 32) and train.input_shape == [3, 64, 64]
    _, files = folder_mod.list_class_folder(root)
    paths = [root / files[i][0] for i in train.index.tolist()]
    with_pil = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((64, 64), Image.BILINEAR)))
                            .permute(2, 0, 1) for p in paths])
    got = train.pixels()
    assert got.shape == (len(train), 3, 64, 64)
    assert int((got.int() - with_pil.int()).abs().max()) == 1
    batch = next(BatchLoader(train, [0.0] * 3, [1 / 255] * 3, 8, False, torch.Generator()).batches(torch.arange(len(train))))
    assert batch.x.shape[-2:] == (64, 64) and torch.allclose(batch.x, got.float(), atol=1e-3)
    assert torch.equal(torch.stack([read_image(p, [3, 64, 64], resize=True) for p in paths]), got)
    # The crop padding scales with the size (4 px at 32 px: 8 at 64) and the run's config says it.
    assert train.augment == {"crop_pad": 8, "flip": True} and vars_of(data)["crop_pad"] == 8
    # At the folder's own size nothing is resized: the held images are what a model is given.
    same = DataOptions(f"folder:{root}", image_size=32, val_fraction=0)
    held = same.load().train
    assert held.size is None and held.pixels() is held.images and same.crop_pad == 4


def test_corruptions_act_at_the_run_size(tmp_path):
    """A camera's condition exists at the camera's resolution: a shifted split is resized to the
    run's size first and corrupted there (the corruptions' blur radii are relative to the image),
    as when the folder was decoded at that size; the clean test split stays at the folder's size."""
    root = write_tree(tmp_path / "d", per_class=2, size=(16, 16))
    plain = DataOptions(f"folder:{root}", image_size=24, val_fraction=0).load()
    shifted = DataOptions(f"folder:{root}", image_size=24, val_fraction=0, shift="corrupt=gaussian_blur:5").load()
    want = corrupt(resize_pixels(plain.train.images, (24, 24)), plain.train.index, "gaussian_blur", 5, 0)
    assert shifted.train.images.shape[-2:] == (24, 24) and torch.equal(shifted.train.pixels(), want)
    assert shifted.test_clean.images.shape[-2:] == (16, 16) and shifted.test_clean.input_shape == [3, 24, 24]


def test_unknown_and_missing_datasets():
    with pytest.raises(InputError, match="unknown dataset"):
        load_source("imagenet")
    with pytest.raises(InputError, match="no such directory"):
        load_source("folder:/nonexistent/path")


def _write_cifar_archive(root, n_per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    return folder


def test_cifar10_archive_layout(tmp_path):
    folder = _write_cifar_archive(tmp_path)
    train, test = load_source("cifar10", data_dir=tmp_path)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert np.array_equal(train.images[0].numpy().reshape(-1), raw[b"data"][0])
    assert train.class_names[0] == "airplane"


class _RunsCode:
    """What a hostile pickle holds: unpickling it calls a function of its choosing."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_cifar10_batch_that_would_run_code_is_refused_and_never_runs(tmp_path):
    folder = _write_cifar_archive(tmp_path)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):     # the archive's own protocol and today's load alike
        with open(folder / "data_batch_1", "wb") as f:
            pickle.dump({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20}, f, protocol=protocol)
        assert load_source("cifar10", data_dir=tmp_path)[0].images.shape == (100, 3, 32, 32)
    marker = tmp_path / "ran"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0] * 20}, f)
    # open pickles as io.open up to Python 3.12 and as _io.open from 3.13
    with pytest.raises(InputError, match=r"data_batch_2: not a readable CIFAR-10 batch \(it names (builtins|_?io)\.open, "):
        load_source("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_cifar10_missing_archive_says_where_to_put_it(tmp_path):
    with pytest.raises(InputError, match="cifar-10-batches-py"):
        load_source("cifar10", data_dir=tmp_path)


@needs_cifar()
def test_shared_cifar10_jpeg_folders():
    train, test = load_source(f"folder:{CIFAR_JPEG}")
    assert len(train) == 50000 and len(test) == 10000
    assert train.num_classes == 10 and train.input_shape == [3, 32, 32]
    assert train.class_counts() == [5000] * 10 and test.class_counts() == [1000] * 10
    assert train.class_names[:3] == ["airplane", "automobile", "bird"]


def test_crop_moves_content_by_at_most_pad_and_keeps_shape():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    rows = out[:, 0].amax(dim=2).argmax(dim=1)
    cols = out[:, 0].amax(dim=1).argmax(dim=1)
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5   # offsets really vary
    assert torch.equal(random_crop(x, 0, g), x)


def test_flip_and_determinism():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4).repeat(32, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(3))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and flipped.any() and kept.any()
    spec = {"crop_pad": 2, "flip": True}
    a = augment_batch(x, spec, torch.Generator().manual_seed(5))
    b = augment_batch(x, spec, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_the_loader_augments_pixels_before_normalising_where_that_gives_the_same_bits(monkeypatch):
    """A reflected crop and a mirror only move pixels, so the loader applies them to the uint8 batch
    (a quarter of the bytes: the padded float copy was its largest buffer, uncounted under a budget);
    a zero pad pads the mean, so there it normalises first. Either way the batch is the one
    normalise-then-augment gives, bit for bit."""
    from edge_sel.data.augment import normalize
    from edge_sel.data.dataset import IndexedDataset
    seen = []
    import edge_sel.data.loader as loader_mod
    monkeypatch.setattr(loader_mod, "augment_by_sample", lambda x, *a: seen.append(x.dtype) or augment_by_sample(x, *a))
    monkeypatch.setattr(loader_mod, "augment_batch", lambda x, *a: seen.append(x.dtype) or augment_batch(x, *a))
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    gen = torch.Generator().manual_seed(1)
    for side, size, pad, dtype in [(32, (48, 48), 6, torch.uint8), (8, None, 3, torch.uint8), (5, None, 6, torch.float32)]:
        ds = IndexedDataset(torch.randint(0, 256, (20, 3, side, side), dtype=torch.uint8, generator=gen),
                            torch.randint(0, 10, (20,)), torch.arange(20) + 7, list("abcdefghij"),
                            augment={"crop_pad": pad, "flip": True}, size=size)
        for seed in (None, 3):
            seen.clear()
            loader = BatchLoader(ds, mean, std, 8, True, torch.Generator().manual_seed(9), augment_seed=seed)
            g = torch.Generator().manual_seed(9)
            for b in loader.batches(torch.randperm(20, generator=gen)):
                x = normalize(ds.pixels(b.positions), mean, std)
                ref = augment_by_sample(x, ds.augment, ds.index[b.positions], 3, 0) if seed else augment_batch(x, ds.augment, g)
                assert torch.equal(ref, b.x)
            assert seen == [dtype] * 3


def test_augmentation_by_sample_follows_the_sample_not_the_batch():
    x = torch.arange(48 * 3 * 8 * 8, dtype=torch.float32).view(48, 3, 8, 8)
    index = torch.arange(100, 148)
    spec = {"crop_pad": 2, "flip": True}
    full = augment_by_sample(x, spec, index, seed=4, epoch=1)
    order = torch.randperm(48, generator=torch.Generator().manual_seed(0))[:20]
    assert torch.equal(augment_by_sample(x[order], spec, index[order], seed=4, epoch=1), full[order])
    other_epoch = augment_by_sample(x, spec, index, seed=4, epoch=2)
    changed = (other_epoch != full).flatten(1).any(1)
    assert int(changed.sum()) > 24            # a new epoch redraws most crops and flips
    flipped = [torch.equal(augment_by_sample(x[i:i + 1], {"flip": True}, index[i:i + 1], 4, 1), x[i:i + 1].flip(3))
               for i in range(48)]
    assert 10 < sum(flipped) < 38             # about half


def test_test_subset_is_a_class_balanced_draw_shared_by_every_shard():
    train, test = load_source("digits")
    a = make_splits(train, test, 0.1, (0, 2), test_subset=50)
    b = make_splits(train, test, 0.1, (1, 2), subset=100, test_subset=50)
    assert len(a.test) == 50 and torch.equal(a.test.index, b.test.index)
    assert max(a.test.class_counts()) - min(a.test.class_counts()) <= 1
    assert len(make_splits(train, test, 0.1).test) == len(test)
    with pytest.raises(InputError, match="--test-subset 5"):
        make_splits(train, test, 0.1, test_subset=5)


def test_a_long_first_decode_says_its_progress_on_stderr(tmp_path, monkeypatch, capsys):
    """CIFAR-10's 60,000 JPEGs took a minute with nothing said: without a terminal, flushed lines
    as the decode starts and at each tenth; on a terminal, a bar; a decoded copy read back, nothing."""
    write_tree(tmp_path / "d", per_class=4)
    monkeypatch.setattr(folder_mod, "PROGRESS_FROM", 12)
    load_source(f"folder:{tmp_path / 'd'}")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"edge-sel: decoding 12 images of {tmp_path / 'd'} once (kept decoded in {folder_mod.cache_dir()})"
    assert lines[1:] == [f"edge-sel: decoded {n} of 12 images of {tmp_path / 'd'}" for n in (2, 4, 6, 8, 10, 12)]
    load_source(f"folder:{tmp_path / 'd'}")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(folder_mod.sys.stderr, "isatty", lambda: True)
    with folder_mod.decoding_progress(tmp_path, 12) as advance:
        assert [advance(i) for i in range(12)] == list(range(12))
    bar = capsys.readouterr().err
    assert f"decoding {tmp_path}:   0%|" in bar and "0/12" in bar and "edge-sel: decod" not in bar, bar
