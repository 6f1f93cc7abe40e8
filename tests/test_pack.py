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
