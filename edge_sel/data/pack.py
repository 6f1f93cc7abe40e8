"""An image folder packed into one file: its encoded images (JPEG, PNG, as they are on disk), class
names and labels, read as the same uint8 tensors the folder gives (`--dataset pack:PATH`).

A machine that receives only a checkout and a few files (no shared data folder, no network) gets a
data set as one file: CIFAR-10's 60,000 JPEG files are 236 MB on disk, 55 MB of JPEG bytes, and
about 18 MB packed, since every one starts with the same 623 bytes of tables, stored once here.

Layout: a fixed header (magic, version, the index's and the blob's lengths, the SHA-256 of both),
the index (zlib-compressed JSON: class names, the common prefix and suffix lengths, and per split
its file names, labels and byte lengths), then the blob: the common prefix, the common suffix and
each image's own bytes in split order. Image i is prefix + its bytes + suffix, byte for byte. A
torn or altered file is refused in one line before anything is decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from edge_sel.core.temp_file import replacing
from edge_sel.data.dataset import IndexedDataset
from edge_sel.data.folder import decode_own_size, decode_sources, list_class_folder
from edge_sel.errors import JSON_LIMIT, InputError, parse_json

MAGIC = b"EDGESELPACK\n"
VERSION = 1
HEADER = struct.Struct("<12sHQQ32s")      # magic, version, index bytes, blob bytes, sha256(index + blob)
SPLITS = ("train", "test")                # a folder's own splits; a folder of class folders packs as "all"
LISTS = ("names", "labels", "lengths")    # per split, one entry per image
INDEX_LIMIT = JSON_LIMIT                  # decompressed index bytes: ImageNet's 1.3M names take about 60 MB


def folder_splits(root: Path) -> dict[str, Path]:
    """The splits of an image folder as `folder:` reads them: train/ (and test/), or class folders."""
    if (root / "train").is_dir():
        return {s: root / s for s in SPLITS if (root / s).is_dir()}
    return {"all": root}


def _common_prefix(blobs: list[bytes]) -> int:
    return len(os.path.commonprefix(blobs))


def write_pack(root: Path, out: Path) -> dict:
    """Pack the image folder `root` into `out` (written whole, then renamed into place)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    classes, splits, payloads = None, {}, []
    for split, where in folder_splits(root).items():
        names, files = list_class_folder(where)
        if classes is not None and names != classes:
            raise InputError(f"{where}: class folders differ from {root / 'train'}")
        classes = names
        data = [(where / rel).read_bytes() for rel, _ in files]
        splits[split] = {"names": [rel for rel, _ in files], "labels": [label for _, label in files]}
        payloads.append(data)
    every = [b for data in payloads for b in data]
    prefix = _common_prefix(every)
    suffix = min(_common_prefix([b[::-1] for b in every]), min(map(len, every)) - prefix)
    head, tail = every[0][:prefix], every[0][len(every[0]) - suffix:]
    for (split, entry), data in zip(splits.items(), payloads):
        entry["lengths"] = [len(b) - prefix - suffix for b in data]
    index = zlib.compress(json.dumps({"classes": classes, "prefix": prefix, "suffix": suffix,
                                      "splits": splits}).encode(), 9)
    blob = b"".join([head, tail, *(b[prefix:len(b) - suffix] for b in every)])
    digest = hashlib.sha256(index + blob).digest()
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as f:
        f.write(HEADER.pack(MAGIC, VERSION, len(index), len(blob), digest))
        f.write(index)
        f.write(blob)
    return {"images": len(every), "bytes": out.stat().st_size, "encoded_bytes": sum(map(len, every)),
            "common_prefix": prefix, "splits": {k: len(v["names"]) for k, v in splits.items()}}


class Pack:
    """A pack read and checked whole: its index, and each image's encoded bytes by split."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise InputError(f"--dataset pack:{self.path}: cannot read ({e.strerror or e})") from None
        where = f"--dataset pack:{self.path}"
        if len(raw) < HEADER.size or raw[:len(MAGIC)] != MAGIC:
            raise InputError(f"{where}: not an edge-sel pack (no pack header); make one with tools/pack_folder.py")
        _, version, index_len, blob_len, digest = HEADER.unpack_from(raw)
        if version != VERSION:
            raise InputError(f"{where}: pack version {version}; this edge-sel reads version {VERSION}")
        if len(raw) != HEADER.size + index_len + blob_len:
            raise InputError(f"{where}: torn pack: {len(raw):,} bytes, its header says "
                             f"{HEADER.size + index_len + blob_len:,}")
        body = memoryview(raw)[HEADER.size:]
        if hashlib.sha256(body).digest() != digest:
            raise InputError(f"{where}: altered pack: its contents do not match the SHA-256 in its header")
        self.digest = digest.hex()
        self.index = read_index(body[:index_len], blob_len, where)
        self._blob = bytes(body[index_len:])

    @property
    def classes(self) -> list[str]:
        return list(self.index["classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.index["splits"])

    def encoded(self, split: str) -> list[tuple[str, bytes]]:
        """(name, the image file's bytes) of every image of `split`, in the folder's order."""
        prefix, suffix = self.index["prefix"], self.index["suffix"]
        head, tail = self._blob[:prefix], self._blob[prefix:prefix + suffix]
        at = prefix + suffix
        for s in self.splits:
            if s == split:
                break
            at += sum(self.index["splits"][s]["lengths"])
        entry = self.index["splits"][split]
        out = []
        for name, length in zip(entry["names"], entry["lengths"]):
            out.append((f"{self.path}:{split}/{name}", head + self._blob[at:at + length] + tail))
            at += length
        return out

    def dataset(self, split: str, name: str, image_size=None) -> IndexedDataset:
        """One split decoded, as `folder:` decodes the same folder (kept decoded in the cache)."""
        labels = self.index["splits"][split]["labels"]
        where = f"{self.path}:{split}"

        def key_of(size) -> str:
            shown = "x".join(map(str, size)) if isinstance(size, (tuple, list)) else str(size)
            return f"pack-{self.digest[:24]}-{split}-{shown}"
        images = decode_own_size(where, lambda size: decode_sources(where, self.encoded(split), size),
                                 image_size, key_of, len(labels))
        return IndexedDataset(torch.from_numpy(np.asarray(images)), torch.tensor(labels, dtype=torch.long),
                              torch.arange(len(labels), dtype=torch.long), self.classes, name)

    def unpack(self, dest: Path) -> int:
        """Write the packed folder back out under `dest`, file for file; returns the images written.
        Every name was checked by read_index to be a class folder and a file name in it."""
        count = 0
        for split in self.splits:
            base = Path(dest) if split == "all" else Path(dest) / split
            for (_, data), rel in zip(self.encoded(split), self.index["splits"][split]["names"]):
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                (base / rel).write_bytes(data)
                count += 1
        return count


def read_index(compressed, blob_len: int, where: str) -> dict:
    """The pack's index, decompressed (at most INDEX_LIMIT bytes), parsed and checked against the
    blob it describes: every name a class folder and a file name in it, labels within the classes,
    the lengths adding up to the blob; else an InputError in one line."""
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(compressed, INDEX_LIMIT)
        if inflate.unconsumed_tail:
            raise InputError(f"{where}: pack index larger than the {INDEX_LIMIT:,} bytes a pack index may hold")
        index = parse_json(text)
    except (zlib.error, ValueError) as e:
        raise InputError(f"{where}: unreadable pack index ({e})") from None

    def bad(what: str):
        return InputError(f"{where}: bad pack index: {what}")
    if not isinstance(index, dict) or not isinstance(index.get("splits"), dict) or not index["splits"]:
        raise bad("no splits")
    classes = index.get("classes")
    if not isinstance(classes, list) or not classes or not all(_plain(c) for c in classes) \
            or len(set(classes)) != len(classes):
        raise bad("classes must be distinct plain folder names")
    ends = [index.get("prefix"), index.get("suffix")]
    if not all(_count(n) for n in ends):
        raise bad("prefix and suffix must be byte counts")
    splits = index["splits"]
    if not (set(splits) <= set(SPLITS) and "train" in splits or set(splits) == {"all"}):
        raise bad(f"splits {sorted(map(str, splits))}; a pack holds train (and test), or all")
    total = sum(ends)
    for split, entry in splits.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in LISTS):
            raise bad(f"split {split!r} needs lists of names, labels and lengths")
        names, labels, lengths = entry["names"], entry["labels"], entry["lengths"]
        if not len(names) == len(labels) == len(lengths) or not names:
            raise bad(f"split {split!r}: {len(names)} names, {len(labels)} labels, {len(lengths)} lengths")
        for name, label, length in zip(names, labels, lengths):
            if not (_count(label) and label < len(classes) and _count(length)):
                raise bad(f"split {split!r}: {name!r} has label {label!r} and length {length!r}")
            folder, _, file = name.partition("/") if isinstance(name, str) else ("", "", "")
            if folder != classes[label] or not _plain(file):
                raise bad(f"split {split!r}: {name!r} is not a file in its class folder {classes[label]!r}")
        if len(set(names)) != len(names):
            raise bad(f"split {split!r} names a file twice")
        total += sum(lengths)
    if total != blob_len:
        raise bad(f"its lengths add up to {total:,} bytes, the pack holds {blob_len:,}")
    return index


def _plain(name) -> bool:
    """A name that is one path component: no separator, not `.` or `..`, no NUL, not hidden."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name \
        and not name.startswith(".")


def _count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0
