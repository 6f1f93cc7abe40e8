"""pack:PATH gives what folder:PATH gives for the folder it was packed from (images, labels, ids,
class names), and a torn or altered pack is refused in one line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edge_sel.data import load_source
from edge_sel.data.pack import Pack, write_pack
from edge_sel.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def write_jpegs(root, classes=("cat", "dog", "eel"), per_class=4, size=(10, 8)):
    rng = np.random.default_rng(3)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                root / c / f"{i:02d}.jpg", quality=90)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_jpegs(root / "train")
    write_jpegs(root / "test", per_class=2)
    out = root.parent / "data.pack"
    info = write_pack(root, out)
    return root, out, info


def same(a, b):
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.index, b.index)
    assert a.class_names == b.class_names and a.augment == b.augment


def test_a_pack_reads_as_the_folder_it_was_made_from(packed, tmp_path):
    root, out, info = packed
    assert info["splits"] == {"train": 12, "test": 6} and info["common_prefix"] > 100   # JPEG tables stored once
    assert info["bytes"] < info["encoded_bytes"]
    for f, p in zip(load_source(f"folder:{root}"), load_source(f"pack:{out}")):
        same(f, p)
    for f, p in zip(load_source(f"folder:{root}", image_size=12), load_source(f"pack:{out}", image_size=12)):
        same(f, p)
        assert f.input_shape == [3, 12, 12]
    # A folder of class folders packs as one split, and the same test share is held out of it.
    write_pack(root / "train", tmp_path / "flat.pack")
    for f, p in zip(load_source(f"folder:{root / 'train'}"), load_source(f"pack:{tmp_path / 'flat.pack'}")):
        same(f, p)
    # Unpacked, every file comes back byte for byte.
    result = subprocess.run([sys.executable, str(REPO / "tools" / "pack_folder.py"), "--unpack", str(out),
                             str(tmp_path / "back")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    assert files == sorted(p.relative_to(tmp_path / "back") for p in (tmp_path / "back").rglob("*.jpg"))
    assert all((root / f).read_bytes() == (tmp_path / "back" / f).read_bytes() for f in files)


def test_a_torn_or_altered_pack_is_refused_in_one_line(packed, tmp_path):
    _, out, _ = packed
    data = out.read_bytes()
    cases = {"torn": data[:-5], "altered": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:],
             "not an edge-sel pack": b"\xff\xd8" + data[2:]}
    for word, content in cases.items():
        bad = tmp_path / f"{word.replace(' ', '-')}.pack"
        bad.write_bytes(content)
        with pytest.raises(InputError, match=f"^--dataset pack:{bad}: {word}") as e:
            load_source(f"pack:{bad}")
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no such file"):
        load_source(f"pack:{tmp_path / 'missing.pack'}")
    assert Pack(out).classes == ["cat", "dog", "eel"]


# ---- a pack's index is checked before anything is read by it -----------------------------------

def crafted(out: Path, path: Path, change) -> Path:
    """The pack `out` with its index changed by `change(index)` and its header's digest made
    right again: what someone who crafts a pack sends."""
    import hashlib
    import json
    import zlib
    from edge_sel.data.pack import HEADER, MAGIC, VERSION
    raw = out.read_bytes()
    _, _, index_len, blob_len, _ = HEADER.unpack_from(raw)
    index = json.loads(zlib.decompress(raw[HEADER.size:HEADER.size + index_len]))
    index = change(index) or index
    blob = raw[HEADER.size + index_len:]
    text = zlib.compress(json.dumps(index).encode() if not isinstance(index, bytes) else index)
    path.write_bytes(HEADER.pack(MAGIC, VERSION, len(text), len(blob), hashlib.sha256(text + blob).digest())
                     + text + blob)
    return path


def names(split, rename):
    split["names"] = [rename(n) for n in split["names"]]


INDEXES = {
    "split_outside": (lambda i: {**i, "splits": {"../escaped": i["splits"]["train"]}}, "splits ['../escaped']"),
    "split_unknown": (lambda i: i["splits"].update(extra=i["splits"]["test"]), "a pack holds train"),
    "name_outside": (lambda i: names(i["splits"]["train"], lambda n: "../../" + n), "not a file in its class"),
    "name_absolute": (lambda i: names(i["splits"]["train"], lambda n: "/tmp/" + n), "not a file in its class"),
    "name_in_a_subfolder": (lambda i: names(i["splits"]["test"], lambda n: n.replace("/", "/x/")),
                            "not a file in its class"),
    "name_in_another_class": (lambda i: names(i["splits"]["test"], lambda n: "dog/" + n.split("/")[1]),
                              "not a file in its class"),
    "name_twice": (lambda i: names(i["splits"]["test"], lambda n: "cat/00.jpg" if n.startswith("cat") else n),
                   "names a file twice"),
    "class_outside": (lambda i: i.update(classes=["..", "dog", "eel"]), "plain folder names"),
    "lengths_missing": (lambda i: i["splits"]["train"].pop("lengths") and None, "needs lists of names, labels and lengths"),
    "labels_short": (lambda i: i["splits"]["train"]["labels"].pop() and None, "12 names, 11 labels, 12 lengths"),
    "label_past_the_classes": (lambda i: i["splits"]["train"]["labels"].__setitem__(0, 3), "label 3"),
    "length_negative": (lambda i: i["splits"]["train"]["lengths"].__setitem__(0, -1), "length -1"),
    "lengths_past_the_blob": (lambda i: i["splits"]["train"]["lengths"].__setitem__(0, 10**9),
                              "bytes, the pack holds"),
    "prefix_not_a_count": (lambda i: i.update(prefix="623"), "prefix and suffix must be byte counts"),
    "no_mapping": (lambda i: [i], "no splits"),
    "nested": (lambda i: b"[" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("case", INDEXES, ids=list(INDEXES))
def test_a_crafted_pack_index_is_refused_in_one_line(packed, tmp_path, case):
    """A split named ../escaped made --unpack write outside its folder, and an index without a
    split's lengths was a KeyError traceback: the index is checked whole before it is used."""
    change, words = INDEXES[case]
    bad = crafted(packed[1], tmp_path / "bad.pack", change)
    with pytest.raises(InputError) as e:
        Pack(bad)
    assert str(e.value).startswith(f"--dataset pack:{bad}: ") and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_unpack_writes_nothing_outside_its_folder_and_says_why_in_one_line(packed, tmp_path, monkeypatch, capsys):
    import runpy
    tool = runpy.run_path(str(REPO / "tools" / "pack_folder.py"))         # in process: no second interpreter
    bad = crafted(packed[1], tmp_path / "bad.pack", INDEXES["split_outside"][0])
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(sys, "argv", ["pack_folder.py", "--unpack", str(bad), str(tmp_path / "out" / "folder")])
    assert tool["main"]() == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "bad pack index" in err and "Traceback" not in err, err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_pack_index_is_decompressed_up_to_its_limit_and_no_further(packed, tmp_path, monkeypatch):
    """The compressed index had no limit: 200 MB of index in a 200 kB pack was decompressed whole."""
    from edge_sel.data import pack
    size = len(zlib_index(packed[1]))
    monkeypatch.setattr(pack, "INDEX_LIMIT", size)
    assert Pack(packed[1]).classes == ["cat", "dog", "eel"]                    # at the limit: read
    bad = crafted(packed[1], tmp_path / "big.pack", lambda i: i.update(pad=" "))
    with pytest.raises(InputError, match=f"^--dataset pack:{bad}: pack index larger than the {size:,} bytes"):
        Pack(bad)


def zlib_index(out: Path) -> bytes:
    import zlib
    from edge_sel.data.pack import HEADER
    raw = out.read_bytes()
    return zlib.decompress(raw[HEADER.size:HEADER.size + HEADER.unpack_from(raw)[2]])
