"""Dataset sources by name -> (training part, test part) as IndexedDatasets."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from edge_sel.data.dataset import IndexedDataset
from edge_sel.data.folder import load_class_folder
from edge_sel.data.split import stratified_split
from edge_sel.errors import InputError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR_AUGMENT = {"crop_pad": 4, "flip": True}
# Sources without an official test split hold out this share, always with the same seed.
HELD_OUT_TEST_FRACTION = 0.2
HELD_OUT_SEED = 1234

DATASET_NAMES = ("digits", "cifar10", "synthetic", "folder:PATH", "pack:PATH")
# The datasets of a size of their own (a folder literally named PATH is a folder).
SIZED_DATASETS = ("digits", "cifar10", "synthetic")


def _carve_test(ds: IndexedDataset) -> tuple[IndexedDataset, IndexedDataset]:
    rest, test = stratified_split(ds, HELD_OUT_TEST_FRACTION, HELD_OUT_SEED)
    return ds.subset(rest), ds.subset(test, ds.name)


def load_digits() -> tuple[IndexedDataset, IndexedDataset]:
    """scikit-learn's 8x8 digits (1,797 images), the default that ships with the install."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    images = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    ds = IndexedDataset(images, torch.from_numpy(d.target.astype(np.int64)),
                        torch.arange(len(images)), [str(c) for c in d.target_names], "digits",
                        {"crop_pad": 1, "flip": False})
    return _carve_test(ds)


def load_synthetic(num_classes: int = 4, per_class: int = 200, size: int = 16,
                   seed: int = 0) -> tuple[IndexedDataset, IndexedDataset]:
    """Class templates plus noise and shifts: learnable, not trivial, generated in milliseconds."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, 3, size // 4, size // 4, generator=g)
    templates = torch.nn.functional.interpolate(templates, size=(size, size), mode="bilinear",
                                                align_corners=False)
    n = num_classes * per_class
    labels = torch.arange(n) % num_classes
    x = templates[labels] * 0.6 + torch.rand(n, 3, size, size, generator=g) * 0.4
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    x = torch.stack([torch.roll(img, tuple(s.tolist()), dims=(1, 2)) for img, s in zip(x, shifts)])
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    ds = IndexedDataset(images, labels, torch.arange(n), [f"class{c}" for c in range(num_classes)],
                        "synthetic", {"crop_pad": 2, "flip": True})
    return _carve_test(ds)


# What a CIFAR-10 python batch may name: numpy arrays and their dtypes (numpy 1's module path and
# numpy 2's), and the codec protocol 2 writes bytes with. Anything else in a pickle is code a data
# directory could run, so it is refused.
ARRAY_GLOBALS = ({(f"{core}.multiarray", name) for core in ("numpy.core", "numpy._core")
                  for name in ("_reconstruct", "scalar")}
                 | {(f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")}
                 | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never does; "
                                         "not loaded, since unpickling it could run code")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = ArraysOnlyUnpickler(f, encoding="bytes").load()
        return np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[b"labels"])
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: not a readable CIFAR-10 batch ({e})") from None
    except (OSError, KeyError, ValueError, EOFError, TypeError, AttributeError, IndexError) as e:
        raise InputError(f"{path}: not a readable CIFAR-10 batch ({e.__class__.__name__})") from None


def cifar10_dir(data_dir: Path | None) -> Path:
    return Path(data_dir or Path.home() / ".cache" / "edge-sel" / "cifar10")


def check_cifar10(data_dir: Path | None) -> None:
    """The archive is there, or torchvision can download it."""
    data_dir = cifar10_dir(data_dir)
    folder = data_dir / "cifar-10-batches-py"
    if not (folder / "test_batch").exists():
        try:
            import torchvision  # noqa: F401  (imports only where a matching build is installed)
        except Exception:
            raise InputError(
                f"--data-dir: {folder} does not hold the CIFAR-10 archive and torchvision is not "
                f"usable here to download it; put the extracted cifar-10-python.tar.gz "
                f"(folder cifar-10-batches-py) under {data_dir}, or use folder:PATH for image folders"
            ) from None


def load_cifar10(data_dir: Path | None, download: bool = True) -> tuple[IndexedDataset, IndexedDataset]:
    """The official python archive (`cifar-10-batches-py`) under --data-dir."""
    data_dir = cifar10_dir(data_dir)
    folder = data_dir / "cifar-10-batches-py"
    if not (folder / "test_batch").exists() and download:
        check_cifar10(data_dir)
        from torchvision.datasets import CIFAR10
        CIFAR10(str(data_dir), train=True, download=True)
    if not (folder / "test_batch").exists():
        raise InputError(f"--data-dir: {folder}/test_batch not found; extract cifar-10-python.tar.gz "
                         f"under {data_dir}")
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _read_cifar_batch(folder / "test_batch")
    train = IndexedDataset(torch.from_numpy(xtr.copy()), torch.from_numpy(ytr.astype(np.int64)),
                           torch.arange(len(xtr)), list(CIFAR10_CLASSES), "cifar10", dict(CIFAR_AUGMENT))
    test = IndexedDataset(torch.from_numpy(xte.copy()), torch.from_numpy(yte.astype(np.int64)),
                          torch.arange(len(xte)), list(CIFAR10_CLASSES), "cifar10", dict(CIFAR_AUGMENT))
    return train, test


def load_folder(path: Path, image_size: int | None = None) -> tuple[IndexedDataset, IndexedDataset]:
    """folder:PATH — PATH/train and PATH/test (the layout of CIFAR-10 as JPEG folders), or PATH
    holding the class folders directly (then a fixed 20% stratified test split is held out).
    Images are held at the folder's own size; with `image_size` a model is given them at that size,
    each batch resized (the crop padding, 4 px at the folder's size, scaled with it)."""
    path = Path(path)
    check_folder(path)
    name = f"folder:{path.name}"
    splits = ["train", "test"] if (path / "train").is_dir() else ["all"]
    return _train_test(lambda split: load_class_folder(path if split == "all" else path / split, name, image_size),
                       [s for s in splits if s == "all" or (path / s).is_dir()], image_size, f"--dataset folder:{path}")


def load_pack(path: Path, image_size: int | None = None) -> tuple[IndexedDataset, IndexedDataset]:
    """pack:PATH — an image folder packed by tools/pack_folder.py, split and decoded as folder:
    splits and decodes the folder it was made from."""
    from edge_sel.data.pack import Pack
    pack = Pack(path)
    return _train_test(lambda split: pack.dataset(split, f"pack:{Path(path).name}", image_size), pack.splits,
                       image_size, f"--dataset pack:{path}")


def _train_test(load, splits: list[str], image_size: int | None, where) -> tuple[IndexedDataset, IndexedDataset]:
    """An image folder's (or its pack's) train and test sets from `load(split)` of its splits:
    train and test, train alone, or all of it (a test share then held out of it alone)."""
    def prepared(split: str) -> IndexedDataset:
        ds = load(split)
        ds.augment = {"crop_pad": 4, "flip": True}
        return ds if image_size is None else ds.at_size(image_size, image_size)
    if "all" in splits:
        return _carve_test(prepared("all"))
    train = prepared("train")
    if "test" not in splits:
        return _carve_test(train)
    test = prepared("test")
    if test.class_names != train.class_names:
        raise InputError(f"{where}: the class folders of test differ from those of train")
    if test.input_shape != train.input_shape:
        raise InputError(f"{where}: test images are {test.input_shape}, train images are {train.input_shape}; "
                         f"pass --image-size to resize both")
    return train, test


def source_paths(spec: str | None, data_dir: Path | None = None) -> list[tuple[str, Path]]:
    """The places on disk a data set is read from, as the user named them (for the rule that an
    output never lands on an input: core/outputs.py)."""
    paths = []
    if spec and folder_path(spec) is not None:
        paths.append(("--dataset", folder_path(spec)))
    if spec and pack_path(spec) is not None:
        paths.append(("--dataset", pack_path(spec)))
    if data_dir is not None and spec == "cifar10":
        paths.append(("--data-dir", Path(data_dir)))
    return paths


def check_folder(path: Path) -> None:
    if not path.is_dir():
        raise InputError(f"--dataset folder:{path}: " + ("not a directory" if path.exists() else "no such directory"))


def folder_path(spec: str) -> Path | None:
    return Path(spec[len("folder:"):]).expanduser() if spec.startswith("folder:") and len(spec) > len("folder:") \
        else None


def pack_path(spec: str) -> Path | None:
    return Path(spec[len("pack:"):]).expanduser() if spec.startswith("pack:") and len(spec) > len("pack:") else None


def check_source(spec: str, data_dir: Path | None = None, image_size: int | None = None) -> None:
    """What can be told of a source without reading it: a known name, a folder that is there, the
    CIFAR-10 archive or a way to download it (a night refuses a bad one before it starts a run)."""
    if image_size is not None and spec in SIZED_DATASETS:
        raise InputError(f"--image-size {image_size}: resizes folder images only; --dataset {spec} has its own size")
    if spec == "cifar10":
        check_cifar10(data_dir)
    elif folder_path(spec) is not None:
        check_folder(folder_path(spec))
    elif pack_path(spec) is not None:
        if not pack_path(spec).is_file():
            raise InputError(f"--dataset {spec}: " + ("not a file" if pack_path(spec).exists() else "no such file"))
    elif spec not in ("digits", "synthetic"):
        raise InputError(f"--dataset: unknown dataset {spec!r}; choose one of {', '.join(DATASET_NAMES)}")


def load_source(spec: str, data_dir: Path | None = None,
                image_size: int | None = None) -> tuple[IndexedDataset, IndexedDataset]:
    check_source(spec, data_dir, image_size)
    if spec == "digits":
        return load_digits()
    if spec == "synthetic":
        return load_synthetic()
    if spec == "cifar10":
        return load_cifar10(data_dir)
    if pack_path(spec) is not None:
        return load_pack(pack_path(spec), image_size)
    return load_folder(folder_path(spec), image_size)
