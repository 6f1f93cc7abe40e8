"""Where a command writes: never onto what it was given, and over an earlier output only when it is one.

One rule for every command that writes (pretrain, finetune, night, export, predict, report, shift,
promote, fleet, bench, trigger, demo):

- an output that is, holds or lies inside one of the command's inputs (a checkpoint, a deployed
  directory, a run, a data set folder, an image) is refused, whatever --overwrite says;
- a file where a directory is expected, and the reverse, is refused;
- an existing non-empty output directory is replaced only with --overwrite, and only when it is an
  earlier output of the same command, recognised by the marker file that command left in it;
- the new directory is made in a temporary sibling and renamed into place once every input is
  valid (`start_out_dir`), or built there whole first (`staged_out_dir`), so a refused or failed
  command leaves the earlier output as it was;
- one command at a time writes an output: while it builds its temporary sibling and renames it
  into place, it holds `.NAME.claim` beside it (an exclusive lock, there only while held:
  core/lock_file.py), and from then on until it is complete (a run: its end), the output's own
  marker file locked; a command naming an output another is writing is refused, and one that finds,
  under the claim, something else there than check_out_dir saw is refused too: another command's
  output is never removed.

Each refusal is an InputError: one line naming the option and the path at fault. A disk that
is full or failing is no fault of the input: a WriteError (exit 1), in one line too.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterable

from edge_sel.core import lock_file
from edge_sel.errors import InputError, InUseError, WriteError

MARKER = ".edge-sel-output"       # "edge-sel COMMAND": which command wrote the directory it is in

# (how the user named an input, its path); a None path is skipped.
Inputs = Iterable[tuple[str, "Path | str | None"]]


def clash(out: Path, given: Path) -> str | None:
    """How `out` would overlap `given` ("is", "lies inside", "holds"), or None. Compared after
    resolving links (a link to a checkpoint is the checkpoint) and by inode (a hard link)."""
    o, g = Path(out).resolve(), Path(given).resolve()
    if o == g or (os.path.exists(out) and os.path.exists(given) and os.path.samefile(out, given)):
        return "is"
    if o.is_relative_to(g):
        return "lies inside"
    if g.is_relative_to(o):
        return "holds"
    return None


def refuse_onto_inputs(out: Path, inputs: Inputs, option: str = "--out") -> None:
    """An output that is, holds or lies inside an input is refused before anything is written."""
    for name, given in inputs:
        if given is None or str(given) == "":
            continue
        how = clash(Path(out), Path(given))
        if how is not None:
            raise InputError(f"{option} {out}: {how} {name} {given}, which this command reads; an output never "
                             f"replaces an input: choose another {option}")


def written_by(directory: Path) -> str | None:
    """The command whose output `directory` is ("export"), or None without a readable marker."""
    try:
        text = (Path(directory) / MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text.removeprefix("edge-sel ") or None


def check_out_dir(out: Path, overwrite: bool, command: str, inputs: Inputs = (), option: str = "--out") -> Path:
    """Refuse `out` before any work: onto an input, a file, or a non-empty directory that is not an
    earlier output of `command` (--overwrite or not)."""
    out = Path(out)
    refuse_onto_inputs(out, inputs, option)
    _refuse_in_use(out, option)
    if out.is_symlink() and out.is_dir():       # a rename would replace the link, not what it names
        raise InputError(f"{option} {out}: a link to {os.readlink(out)}; name the directory itself")
    if os.path.lexists(out) and not out.is_dir():
        raise InputError(f"{option} {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{option} {out}: already exists and is not empty; pass --overwrite to replace it")
        made_by = written_by(out)
        if made_by != command:
            why = f"it holds no {MARKER} file" if made_by is None else f"edge-sel {made_by} wrote it"
            raise InputError(f"{option} {out}: not an earlier output of edge-sel {command} ({why}); --overwrite "
                             f"replaces only that: remove it yourself or choose another {option}")
    _seen[_key(out)] = _identity(out)
    return out


# Per output this process writes (by absolute path): the locked descriptor of its marker, held
# until it is complete; and what the output held when check_out_dir looked.
_writing: dict[str, int] = {}
_seen: dict[str, tuple | None] = {}
_made_marker: dict[str, bool] = {}     # claim_in_place made the marker (a run from before markers)


def _key(out: Path) -> str:
    return os.path.abspath(out)


def _identity(out: Path) -> tuple | None:
    """Which directory `out` is when it holds anything (device and inode), else None."""
    try:
        if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
            st = out.stat()
            return st.st_dev, st.st_ino
    except OSError:
        pass
    return None


def _refuse_in_use(out: Path, option: str) -> None:
    """Refused when another process holds `out`'s marker locked: a command writing it now."""
    try:
        fd = os.open(Path(out) / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if any(os.fstat(mine)[1:3] == st[1:3] for mine in _writing.values()):
            return              # this process's own
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUseError(f"{option} {out}: another edge-sel command is writing it now; wait for it to end "
                             f"or choose another {option}") from None
    finally:
        os.close(fd)


def release_claim(out: Path, failed: bool = False) -> None:
    """The output is complete: another command may replace it. `failed`: the command ended without
    writing it, so an empty marker its claim_in_place made (a run from before markers) goes again:
    a refused resume leaves the run as it found it."""
    fd = _writing.pop(_key(out), None)
    if fd is not None:
        os.close(fd)
    if _made_marker.pop(_key(out), False) and failed:
        with contextlib.suppress(OSError):
            os.unlink(Path(out) / MARKER)
    _seen.pop(_key(out), None)


@atexit.register
def _release_all() -> None:
    for key in list(_writing):
        release_claim(Path(key))


@contextlib.contextmanager
def _claimed(out: Path, option: str, in_place: bool = False):
    """Hold `.NAME.claim` beside `out` (refused in one line when another command holds it), and
    refuse an `out` that another command is writing or wrote since check_out_dir looked (`in_place`:
    the caller locks the marker of the `out` it writes into itself)."""
    path = str(_sibling(out, "claim", pid=False))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)      # as the temporary sibling would be
        fd = lock_file.acquire(path, wait=False)
    except OSError as e:
        raise cannot_create(option, out, e) from None
    if fd is None:
        raise InUseError(f"{option} {out}: another edge-sel command is writing it now; wait for it to end or "
                         f"choose another {option}")
    try:
        if not in_place:
            _refuse_in_use(out, option)
        if _key(out) in _seen and _identity(out) != _seen[_key(out)]:
            raise InputError(f"{option} {out}: another command wrote it after this one checked it; nothing "
                             f"of it is replaced")
        yield
    finally:
        lock_file.release(path, fd)


def claim_in_place(out: Path, option: str = "--resume") -> None:
    """Hold an existing output that this command writes into where it is (a run resumed) as its one
    writer until release_claim or this process's end: its marker locked, as a new output's is. Refused
    in one line when another process holds it (a run still running, another resume, another night)."""
    out = Path(out)
    earlier = _writing.pop(_key(out), None)         # this process's own, from a run it left unfinished
    if earlier is not None:
        os.close(earlier)
    with _claimed(out, option, in_place=True):      # apart from a command putting a new output in its place
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        made = False
        try:
            try:        # a run from before markers gets an empty one (it names no command), to be claimed
                fd, made = os.open(out / MARKER, flags | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                fd = os.open(out / MARKER, flags)
        except OSError as e:
            raise cannot_create(option, out, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InUseError(f"{option} {out}: another edge-sel process is writing this run now (it holds "
                             f"{MARKER} locked); wait for it to end") from None
        _writing[_key(out)] = fd
        _made_marker[_key(out)] = made


def check_out_file(out: Path, overwrite: bool, inputs: Inputs = (), option: str = "--out") -> Path:
    """Refuse the file `out` before any work: onto an input, a directory, or an existing regular
    file without --overwrite. Devices and pipes are written, never replaced."""
    out = Path(out)
    refuse_onto_inputs(out, inputs, option)
    if out.is_dir():
        raise InputError(f"{option} {out}: is a directory; a file is expected")
    if out.is_file() and not overwrite:
        raise InputError(f"{option} {out}: already exists; pass --overwrite to replace it")
    return out


def start_out_dir(out: Path, command: str, option: str = "--out") -> Path:
    """Called once every input is valid: an empty `out` holding `command`'s marker, made in a
    temporary sibling and renamed over an earlier output, which is removed only then. The marker
    stays locked (the output is being written) until release_claim or this process's end."""
    out = Path(out)
    new = _fresh_sibling(out, command, option)
    try:
        with _claimed(out, option):
            _put_in_place(new, out, option)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        release_claim(out)
        raise
    return out


@contextlib.contextmanager
def staged_out_dir(out: Path, command: str, option: str = "--out"):
    """Build the whole output in a temporary sibling (yielded); renamed into place only when the
    block ends without error, so a failure keeps an earlier output as it was."""
    out = Path(out)
    with _claimed(out, option):
        new = _fresh_sibling(out, command, option)
        try:
            yield new
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            release_claim(out)
            raise
        _put_in_place(new, out, option)
    release_claim(out)


# A disk that is full or failing: the write failed, not the user's choice of place.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def cannot_create(option: str, out: Path, e: OSError) -> Exception:
    said = f"{option} {out}: cannot create ({e.strerror or e})"
    return WriteError(said) if e.errno in DISK_ERRORS else InputError(said)


def _sibling(out: Path, what: str, pid: bool = True) -> Path:
    out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.{what}-{os.getpid()}" if pid else f".{out.name}.{what}")


def _fresh_sibling(out: Path, command: str, option: str) -> Path:
    """The temporary sibling, empty but for the marker, which this process holds locked."""
    new = _sibling(out, "new")
    try:
        if os.path.lexists(new):
            shutil.rmtree(new)
        new.mkdir(parents=True)
        (new / MARKER).write_text(f"edge-sel {command}\n")
        fd = os.open(new / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise cannot_create(option, out, e) from None
    fcntl.flock(fd, fcntl.LOCK_EX)          # a new file: no one else holds it
    earlier = _writing.pop(_key(out), None)     # an earlier output of this process's, replaced now
    if earlier is not None:
        os.close(earlier)
    _writing[_key(out)] = fd
    return new


def _put_in_place(new: Path, out: Path, option: str) -> None:
    """`new` renamed to `out`; an earlier `out` moved aside first and removed once `new` is there."""
    old = _sibling(out, "old") if out.is_dir() and not out.is_symlink() and any(out.iterdir()) else None
    try:
        if old is not None:
            os.replace(out, old)
        os.replace(new, out)            # over an empty directory too
    except OSError as e:
        if old is not None and not os.path.lexists(out):
            os.replace(old, out)        # the earlier output back under its name
        shutil.rmtree(new, ignore_errors=True)
        release_claim(out)
        raise cannot_create(option, out, e) from None
    _seen.pop(_key(out), None)          # what is there now is this command's
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# Per file output this process writes (by absolute path): its held claim (path, descriptor).
_file_claims: dict[str, tuple[str, int]] = {}


def claim_out_file(out: Path, option: str = "--out") -> None:
    """Hold `.NAME.claim` beside the file `out` until it is complete (release_file_claim, or this
    process's end), the claim a directory output holds while it is put in place: a command naming a
    file another command is writing is refused in one line. A device or a pipe is not claimed (it is
    written, never replaced); neither is stdout ("-")."""
    out = Path(out)
    if str(out) == "-" or _key(out) in _file_claims or (os.path.lexists(out) and not out.is_file()):
        return
    path = str(_sibling(out, "claim", pid=False))
    try:
        fd = lock_file.acquire(path, wait=False)
    except OSError as e:        # where the file itself could not be written either
        said = f"{option} {out}: cannot write ({e.strerror or e})"
        raise (WriteError(said) if e.errno in DISK_ERRORS else InputError(said)) from None
    if fd is None:
        raise InputError(f"{option} {out}: another edge-sel command is writing it now; wait for it to end or "
                         f"choose another {option}")
    _file_claims[_key(out)] = (path, fd)


@atexit.register
def release_file_claims() -> None:
    for key in list(_file_claims):
        path, fd = _file_claims.pop(key)
        lock_file.release(path, fd)
