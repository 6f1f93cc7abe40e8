"""A full disk at any write of a run is one line (exit 1) naming the file, and leaves no truncated
file that a later command would read: every file is written whole to a temporary name and renamed."""

from __future__ import annotations

import builtins
import errno
import json

import pytest

from edge_sel.core.outputs import MARKER
from edge_sel.core.records import RecordWriter, read_records
from helpers import run_main

REAL_OPEN = builtins.open


def full_disk_at(monkeypatch, name: str, after_bytes: int = 64):
    """Every file opened for writing whose name contains `name` takes `after_bytes` bytes, then
    fails with ENOSPC, as a filling disk does."""

    class Filling:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            room = after_bytes - self.written
            if len(data) > room:
                self.f.write(data[:max(room, 0)])
                self.f.flush()
                self.written = after_bytes
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __iter__(self):
            return iter(self.f)

    def fake_open(file, mode="r", *args, **kwargs):
        f = REAL_OPEN(file, mode, *args, **kwargs)
        if any(c in mode for c in "wa") and name in str(file):
            return Filling(f)
        return f
    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.parametrize("name", ["anchors.safetensors", "fisher.safetensors", "source.safetensors",
                                  "model.safetensors", "model.json"])
def test_a_full_disk_while_pretrain_writes_is_one_line_and_leaves_no_truncated_file(name, tmp_path, capsys,
                                                                                    monkeypatch):
    full_disk_at(monkeypatch, name)
    out = tmp_path / "warm"
    code, err = run_main(["pretrain", "--dataset", "synthetic", "--epochs", 1, "--batch-size", 64,
                          "--anchors-per-class", 4, "--fisher-samples", 32, "--quiet", "--out", out], capsys)
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("edge-sel: error: ") and name in lines[0] and "No space left" in lines[0]
    # Nothing half-written is left under a name a later command reads, and no temporary file either.
    target = out / name
    assert not target.exists() or target.stat().st_size > 64
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MARKER]    # which command wrote it


def test_a_full_disk_while_a_record_is_appended_leaves_the_records_whole(tmp_path, monkeypatch):
    writer = RecordWriter(tmp_path)
    writer.append({"epoch": 0, "val_acc": 0.5})
    full_disk_at(monkeypatch, "metrics.jsonl", after_bytes=10)
    with pytest.raises(Exception) as failed:
        writer.append({"epoch": 1, "val_acc": 0.6, "note": "x" * 100})
    monkeypatch.undo()
    assert "metrics.jsonl" in str(failed.value)
    # The half-written line is gone: the next record appended starts on its own line.
    writer.append({"epoch": 2, "val_acc": 0.7})
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 2]
    assert [r["epoch"] for r in read_records(tmp_path / "metrics.jsonl")] == [0, 2] == \
        [r["epoch"] for r in writer.records]
