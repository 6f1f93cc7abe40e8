"""The output rules (edge_sel/core/outputs.py) on plain files and folders, no command started: what
overlaps an input, which existing output --overwrite may replace, and how the new one is put in
place. The commands' own cases: tests/test_outputs_onto_inputs.py."""

import os

import pytest

from edge_sel.core import outputs
from edge_sel.core.outputs import (MARKER, check_out_dir, check_out_file, claim_in_place, clash, refuse_onto_inputs,
                                   release_claim, staged_out_dir, start_out_dir, written_by)
from edge_sel.errors import InputError, InUseError, WriteError


def made(path, *files):
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text(name)
    return path


def output_of(path, command, *files):
    made(path, *files)
    (path / MARKER).write_text(f"edge-sel {command}\n")
    return path


def siblings(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


# ---- what overlaps an input ---------------------------------------------------------------------

def test_an_output_is_holds_or_lies_inside_an_input_or_neither(tmp_path):
    ck = made(tmp_path / "ck", "model.json")
    assert clash(ck, ck) == "is"
    assert clash(tmp_path / "ck" / "sub" / "x", ck) == "lies inside"
    assert clash(tmp_path, ck) == "holds"
    assert clash(tmp_path / "other", ck) is None
    assert clash(tmp_path / "ck2", ck) is None                 # a name that starts the same is not inside
    assert clash(tmp_path / "ck" / ".." / "ck", ck) == "is"


def test_another_name_for_an_input_is_the_input(tmp_path):
    ck = made(tmp_path / "ck", "model.json")
    (tmp_path / "link").symlink_to("ck")
    assert clash(tmp_path / "link", ck) == "is" and clash(ck, tmp_path / "link") == "is"
    assert clash(tmp_path / "link" / "out", ck) == "lies inside"
    os.link(ck / "model.json", tmp_path / "card")
    assert clash(tmp_path / "card", ck / "model.json") == "is"
    (tmp_path / "copy").write_text("model.json")
    assert clash(tmp_path / "copy", ck / "model.json") is None     # the same bytes are not the same file


def test_a_refusal_names_the_option_the_output_and_the_input_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                # an empty path would be "." here
    ck = made(tmp_path / "ck")
    with pytest.raises(InputError) as e:
        refuse_onto_inputs(ck / "onnx", [("--data-dir", None), ("--dataset", ""), ("--checkpoint", ck)], "--out")
    assert str(e.value) == (f"--out {ck / 'onnx'}: lies inside --checkpoint {ck}, which this command reads; an "
                            f"output never replaces an input: choose another --out")
    refuse_onto_inputs(tmp_path / "elsewhere", [("--checkpoint", ck), ("--data-dir", None)], "--out")
    with pytest.raises(InputError, match=f"^--summary {tmp_path}: holds RUN {ck}, "):
        refuse_onto_inputs(tmp_path, [("--checkpoint", tmp_path.parent / "x"), ("RUN", ck)], "--summary")
    with pytest.raises(InputError, match=f"^--out {ck}: is RUN {ck}, "):
        refuse_onto_inputs(ck, [("RUN", ck)])
    for check in (check_out_dir, check_out_file):               # each check names its own option
        with pytest.raises(InputError, match=f"^--into {ck}: is RUN "):
            check(ck, True, *(["export"] if check is check_out_dir else []), [("RUN", ck)], option="--into")


# ---- which existing output --overwrite may replace -------------------------------------------------

def test_the_marker_names_the_command_that_wrote_a_directory(tmp_path):
    assert written_by(made(tmp_path / "none")) is None
    assert written_by(output_of(tmp_path / "export", "export")) == "export"
    assert written_by(output_of(tmp_path / "bench", "bench edge")) == "bench edge"
    (made(tmp_path / "empty") / MARKER).write_text("\n")
    assert written_by(tmp_path / "empty") is None
    (made(tmp_path / "binary") / MARKER).write_bytes(b"\xff\xfe")
    assert written_by(tmp_path / "binary") is None
    made(tmp_path / "odd" / MARKER)                             # a directory where the marker should be
    assert written_by(tmp_path / "odd") is None


def test_an_existing_out_directory_is_refused_unless_an_earlier_output_of_the_command(tmp_path):
    assert check_out_dir(str(tmp_path / "new"), False, "export") == tmp_path / "new"
    assert check_out_dir(made(tmp_path / "empty"), False, "export") == tmp_path / "empty"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(InputError) as e:
        check_out_dir(tmp_path / "file", True, "export")
    assert str(e.value) == f"--out {tmp_path / 'file'}: exists and is not a directory"
    (tmp_path / "dangling").symlink_to("nowhere")
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_out_dir(tmp_path / "dangling", True, "export")
    users = made(tmp_path / "users", "photo.png")
    with pytest.raises(InputError) as e:
        check_out_dir(users, False, "export", option="--into")
    assert str(e.value) == f"--into {users}: already exists and is not empty; pass --overwrite to replace it"
    with pytest.raises(InputError) as e:
        check_out_dir(users, True, "export")
    assert str(e.value) == (f"--out {users}: not an earlier output of edge-sel export (it holds no {MARKER} file); "
                            f"--overwrite replaces only that: remove it yourself or choose another --out")
    report = output_of(tmp_path / "report", "report", "report.html")
    with pytest.raises(InputError) as e:
        check_out_dir(report, True, "export")
    assert "(edge-sel report wrote it)" in str(e.value)
    with pytest.raises(InputError, match="already exists and is not empty"):
        check_out_dir(report, False, "report")
    assert check_out_dir(report, True, "report") == report
    assert (report / "report.html").is_file()                  # checked, not touched
    with pytest.raises(InputError, match="is --checkpoint"):    # an input first, --overwrite or not
        check_out_dir(report, True, "report", [("--checkpoint", report)])


def test_an_out_file_is_replaced_only_with_overwrite_and_never_a_directory(tmp_path):
    assert check_out_file(str(tmp_path / "new.jsonl"), False) == tmp_path / "new.jsonl"
    with pytest.raises(InputError) as e:
        check_out_file(tmp_path, True, option="--summary")
    assert str(e.value) == f"--summary {tmp_path}: is a directory; a file is expected"
    (tmp_path / "old.jsonl").write_text("earlier")
    with pytest.raises(InputError) as e:
        check_out_file(tmp_path / "old.jsonl", False)
    assert str(e.value) == f"--out {tmp_path / 'old.jsonl'}: already exists; pass --overwrite to replace it"
    assert check_out_file(tmp_path / "old.jsonl", True) == tmp_path / "old.jsonl"
    os.mkfifo(tmp_path / "pipe")                               # written to, never replaced
    assert check_out_file(tmp_path / "pipe", False) == tmp_path / "pipe"
    with pytest.raises(InputError, match="is the input"):
        check_out_file(tmp_path / "old.jsonl", True, [("the input", tmp_path / "old.jsonl")])
    assert (tmp_path / "old.jsonl").read_text() == "earlier"


# ---- how the new output is put in place -----------------------------------------------------------

def test_a_new_out_holds_its_marker_and_replaces_an_earlier_output_whole(tmp_path):
    out = start_out_dir(str(tmp_path / "deep" / "out"), "finetune")
    assert out == tmp_path / "deep" / "out" and os.listdir(out) == [MARKER]
    assert (out / MARKER).read_text() == "edge-sel finetune\n"
    (out / "metrics.jsonl").write_text("earlier")
    start_out_dir(out, "finetune")
    assert os.listdir(out) == [MARKER] and siblings(tmp_path / "deep") == ["out"]
    empty = made(tmp_path / "empty")
    start_out_dir(empty, "report")
    assert os.listdir(empty) == [MARKER]


def test_a_new_out_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError) as e:
        start_out_dir(tmp_path / "file" / "out", "export", option="--into")
    assert str(e.value) == f"--into {tmp_path / 'file' / 'out'}: cannot create (Not a directory)"
    assert siblings(tmp_path) == ["file"]
    monkeypatch.setattr(outputs.Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(OSError("no errno")))
    with pytest.raises(InputError) as e:
        start_out_dir(tmp_path / "out", "export")
    assert str(e.value) == f"--out {tmp_path / 'out'}: cannot create (no errno)"
    # A disk that fills while the marker is written is a failed write (exit 1), not bad input.
    monkeypatch.undo()
    monkeypatch.setattr(outputs.Path, "write_text", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(WriteError) as e:
        start_out_dir(tmp_path / "full", "export")
    assert str(e.value) == f"--out {tmp_path / 'full'}: cannot create (No space)"


def test_an_out_that_is_a_link_to_a_directory_is_refused_naming_its_target(tmp_path):
    output_of(tmp_path / "target", "export", "kept")
    (tmp_path / "link").symlink_to("target")
    with pytest.raises(InputError) as e:
        check_out_dir(tmp_path / "link", True, "export")
    assert str(e.value) == f"--out {tmp_path / 'link'}: a link to target; name the directory itself"


def test_a_failed_rename_puts_the_earlier_output_back(tmp_path, monkeypatch):
    out = output_of(tmp_path / "out", "export", "model.onnx")
    real = os.replace
    calls = []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(a, b)
    monkeypatch.setattr(outputs.os, "replace", second_fails)
    with pytest.raises(WriteError) as e:        # a full disk is no fault of the input: exit 1
        start_out_dir(out, "export")
    assert str(e.value) == f"--out {out}: cannot create (No space left on device)"
    monkeypatch.undo()
    pid = os.getpid()
    assert calls[:2] == [(out, tmp_path / f".out.old-{pid}"), (tmp_path / f".out.new-{pid}", out)]
    assert sorted(os.listdir(out)) == sorted([MARKER, "model.onnx"]) and siblings(tmp_path) == ["out"]


def test_a_failed_first_output_leaves_nothing_and_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    with pytest.raises(InputError, match="cannot create \\(Read-only file system\\)"):
        start_out_dir(tmp_path / "out", "export")
    assert siblings(tmp_path) == []


@pytest.mark.parametrize("left", ["old", "new"])
def test_a_leftover_that_cannot_be_removed_does_not_change_the_outcome(tmp_path, monkeypatch, left):
    """Removing the earlier output (after the new one is in place) or a staging (after a failed
    rename) is tidying up: a failure there neither fails the command nor hides its own error."""
    out = output_of(tmp_path / "out", "export", "model.onnx")
    real_rmdir, real_replace = os.rmdir, os.replace

    def stuck(path, *a, **k):
        if f".out.{left}-" in str(path):
            raise OSError(16, "Device or resource busy")
        return real_rmdir(path, *a, **k)
    monkeypatch.setattr(os, "rmdir", stuck)
    if left == "new":
        def second_fails(a, b):
            if ".new-" in str(a):
                raise OSError(28, "No space left on device")
            return real_replace(a, b)
        monkeypatch.setattr(outputs.os, "replace", second_fails)
        with pytest.raises(WriteError, match="No space left on device"):
            start_out_dir(out, "export")
    else:
        assert start_out_dir(out, "export") == out and os.listdir(out) == [MARKER]


def test_a_staged_output_is_in_place_only_when_whole(tmp_path):
    out = output_of(tmp_path / "out", "export", "model.onnx")
    with pytest.raises(RuntimeError, match="torn bank"):
        with staged_out_dir(out, "export") as staging:
            assert staging.parent == tmp_path and staging.name.startswith(".out.new-")
            (staging / "half.onnx").write_text("")
            raise RuntimeError("torn bank")
    assert sorted(os.listdir(out)) == sorted([MARKER, "model.onnx"]) and siblings(tmp_path) == ["out"]
    with staged_out_dir(out, "export") as staging:
        (staging / "manifest.json").write_text("{}")
        assert (out / "model.onnx").is_file()                  # the earlier one serves until the end
    assert sorted(os.listdir(out)) == sorted([MARKER, "manifest.json"]) and siblings(tmp_path) == ["out"]


def test_a_staging_left_by_an_earlier_crash_is_cleared(tmp_path):
    leftover = made(tmp_path / f".out.new-{os.getpid()}", "stale")
    start_out_dir(tmp_path / "out", "export")
    assert not leftover.exists() and os.listdir(tmp_path / "out") == [MARKER]


# ---- two commands naming one output at once ----------------------------------------------------

ANOTHER_COMMAND = """
import sys, time
from pathlib import Path
from edge_sel.core.outputs import check_out_dir, staged_out_dir, start_out_dir
out, ready, go_on, how = *map(Path, sys.argv[1:4]), sys.argv[4]
check_out_dir(out, False, "export")
if how == "run":                    # a run: its output in place, written into as it trains
    start_out_dir(out, "export")
    (out / "result").write_text("the other command's")
    ready.touch()
    while not go_on.exists():
        time.sleep(0.02)
else:
    with staged_out_dir(out, "export") as staging:
        (staging / "result").write_text("the other command's")
        ready.touch()
        while not go_on.exists():       # building its output, as an export takes seconds to
            time.sleep(0.02)
"""


def another_command(tmp_path, out, how="staged"):
    """An export in another process, paused while it builds `out` in its temporary sibling (or,
    `how` "run", while it writes into `out` in place)."""
    import subprocess
    import sys
    import time
    ready, go_on = tmp_path / "ready", tmp_path / "go-on"
    proc = subprocess.Popen([sys.executable, "-c", ANOTHER_COMMAND, str(out), str(ready), str(go_on), how])
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists()

    def finish():
        go_on.touch()
        assert proc.wait(60) == 0
    return finish


def test_a_second_command_on_an_output_another_is_writing_is_refused_and_removes_nothing(tmp_path):
    """Both commands checked --out while it was free. The old code let the second build its output
    and put it in place, then the first put its own over it: both exited 0 and one's work vanished
    (or, for a run, one run's config ended beside the other's records)."""
    out = tmp_path / "art"
    check_out_dir(out, False, "export")
    finish = another_command(tmp_path, out)
    with pytest.raises(InputError) as e:
        with staged_out_dir(out, "export") as staging:
            (staging / "result").write_text("this command's")
    assert str(e.value) == (f"--out {out}: another edge-sel command is writing it now; wait for it to end or "
                            f"choose another --out")
    finish()
    assert (out / "result").read_text() == "the other command's"
    assert siblings(tmp_path) == ["art", "go-on", "ready"]          # no claim, no temporary left


def test_an_output_written_by_another_after_this_command_checked_it_is_never_replaced(tmp_path):
    out = tmp_path / "run"
    check_out_dir(out, True, "export")          # free when checked, --overwrite given
    another_command(tmp_path, out)()            # another export puts its output there meanwhile
    with pytest.raises(InputError) as e:
        start_out_dir(out, "export")
    assert str(e.value) == f"--out {out}: another command wrote it after this one checked it; nothing of it is replaced"
    assert (out / "result").read_text() == "the other command's"
    assert siblings(tmp_path) == ["go-on", "ready", "run"]


def test_an_output_another_command_writes_into_is_refused_even_with_overwrite(tmp_path):
    """A run in place (start_out_dir) keeps its marker locked until it ends: --overwrite of the same
    command's output is refused while it runs, and accepted once it has ended."""
    out = tmp_path / "run"
    finish = another_command(tmp_path, out, "run")
    for attempt in (lambda: check_out_dir(out, True, "export"), lambda: start_out_dir(out, "export")):
        with pytest.raises(InputError, match="another edge-sel command is writing it now"):
            attempt()
        assert (out / "result").read_text() == "the other command's"
    finish()
    check_out_dir(out, True, "export")
    assert start_out_dir(out, "export") == out and os.listdir(out) == [MARKER]


def test_a_staged_output_in_folders_not_made_yet_makes_them(tmp_path):
    with staged_out_dir(tmp_path / "new" / "deeper" / "art", "export") as staging:
        (staging / "model.onnx").write_text("")
    assert sorted(os.listdir(tmp_path / "new" / "deeper")) == ["art"]


def locked(path) -> bool:
    """Whether some open file holds `path` locked (another open file of this process counts too)."""
    import fcntl
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_a_run_written_in_place_again_is_claimed_as_a_new_one_is(tmp_path):
    """A resume writes into its run where it is: it holds the run's marker locked until it ends, and
    is refused in one line while another process holds it (the old resume took no claim at all)."""
    out = tmp_path / "run"
    finish = another_command(tmp_path, out, "run")
    with pytest.raises(InUseError) as e:
        claim_in_place(out)
    assert str(e.value) == (f"--resume {out}: another edge-sel process is writing this run now (it holds {MARKER} "
                            f"locked); wait for it to end")
    finish()
    assert not locked(out / MARKER)
    claim_in_place(out)
    assert locked(out / MARKER) and written_by(out) == "export"
    claim_in_place(out)         # again in this process: its own claim taken over, not refused
    release_claim(out)
    assert not locked(out / MARKER) and siblings(tmp_path) == ["go-on", "ready", "run"]
    legacy = made(tmp_path / "legacy", "config.json")       # a run from before markers gets an empty one
    claim_in_place(legacy, "--run")
    assert locked(legacy / MARKER) and (legacy / MARKER).read_text() == "" and written_by(legacy) is None
    release_claim(legacy)


def test_a_run_claimed_in_place_is_refused_in_one_line_while_claimed_and_never_through_a_link(tmp_path):
    from edge_sel.core import lock_file
    out = made(tmp_path / "run", "config.json")
    claim = tmp_path / ".run.claim"                 # another command putting a new output there
    fd = lock_file.acquire(claim, wait=False)
    with pytest.raises(InUseError) as e:
        claim_in_place(out)
    lock_file.release(claim, fd)
    assert str(e.value) == (f"--resume {out}: another edge-sel command is writing it now; wait for it to end or "
                            f"choose another --resume")
    (tmp_path / "victim").write_text("the user's")
    (out / MARKER).symlink_to(tmp_path / "victim")
    with pytest.raises(InputError) as e:
        claim_in_place(out)
    assert str(e.value) == f"--resume {out}: cannot create (Too many levels of symbolic links)"
    (out / MARKER).unlink()
    before = os.umask(0)
    try:
        claim_in_place(out)
    finally:
        os.umask(before)
    assert (out / MARKER).stat().st_mode & 0o777 == 0o644 and (tmp_path / "victim").read_text() == "the user's"
    release_claim(out)
