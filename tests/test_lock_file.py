"""The lock that is a file only while held (edge_sel/core/lock_file.py), one interleaving at a time:
what a second holder gets when its holder lets go between its open and its lock."""

import os

from edge_sel.core import lock_file


def test_a_lock_got_on_a_file_its_holder_removed_is_never_a_second_holder(tmp_path, monkeypatch):
    """Killed the mutant that drops acquire's check that the locked file is still the one at PATH: a
    holder that opened the file just before its holder let go then kept its lock on the removed file
    while another made a new one and locked it too (four processes counting under the lock lost three
    of every four increments)."""
    path = tmp_path / ".x.lock"
    first = lock_file.acquire(path, wait=False)
    real_open, others = os.open, []

    def open_then_first_lets_go(p, *args, **kwargs):
        fd = real_open(p, *args, **kwargs)
        if not others and os.fspath(p) == os.fspath(path):
            others.append(None)
            lock_file.release(path, first)          # the first lets go: its file is removed
            others[0] = lock_file.acquire(path, wait=False)         # and another takes a new one
        return fd
    monkeypatch.setattr(lock_file.os, "open", open_then_first_lets_go)
    second = lock_file.acquire(path, wait=False)
    monkeypatch.undo()
    (other,) = others
    assert other is not None and os.fstat(other)[1:3] == os.stat(path, follow_symlinks=False)[1:3]
    assert second is None               # the other holds the file at PATH: one holder at a time
    lock_file.release(path, other)
    assert not os.path.lexists(path)


def test_a_lock_got_on_a_removed_file_with_none_at_the_path_is_taken_on_a_new_one(tmp_path, monkeypatch):
    path = tmp_path / ".x.lock"
    first = lock_file.acquire(path, wait=False)
    real_open, released = os.open, []

    def open_then_first_lets_go(p, *args, **kwargs):
        fd = real_open(p, *args, **kwargs)
        if not released and os.fspath(p) == os.fspath(path):
            lock_file.release(path, first)
            released.append(p)
        return fd
    monkeypatch.setattr(lock_file.os, "open", open_then_first_lets_go)
    second = lock_file.acquire(path, wait=False)
    monkeypatch.undo()
    assert released and os.fstat(second)[1:3] == os.stat(path, follow_symlinks=False)[1:3]
    assert lock_file.acquire(path, wait=False) is None
    lock_file.release(path, second)


def test_a_held_lock_is_refused_without_wait_and_its_file_is_there_only_while_held(tmp_path):
    path = tmp_path / ".x.lock"
    fd = lock_file.acquire(path, wait=False)
    assert os.path.isfile(path) and lock_file.acquire(path, wait=False) is None
    lock_file.release(path, fd)
    assert not os.path.lexists(path)


def test_a_link_at_the_path_is_never_followed_nor_taken(tmp_path, monkeypatch):
    """Killed the mutants that drop O_NOFOLLOW from acquire's open, and that follow a link at PATH
    when checking the locked file is the one there (a link swapped in after the open, to that file)."""
    import errno

    import pytest
    path, victim = tmp_path / ".x.lock", tmp_path / "victim"
    path.symlink_to(victim)
    with pytest.raises(OSError) as e:
        lock_file.acquire(path, wait=False)
    assert e.value.errno == errno.ELOOP and not victim.exists()
    path.unlink()
    real_open, swapped = os.open, []

    def open_then_link_swapped_in(p, *args, **kwargs):
        fd = real_open(p, *args, **kwargs)
        if not swapped and os.fspath(p) == os.fspath(path):
            swapped.append(p)
            os.replace(path, victim)
            path.symlink_to(victim)          # PATH now a link to the very file just locked
        return fd
    monkeypatch.setattr(lock_file.os, "open", open_then_link_swapped_in)
    with pytest.raises(OSError) as e:
        lock_file.acquire(path, wait=False)
    assert swapped and e.value.errno == errno.ELOOP


def test_the_lock_file_is_made_0644_less_the_umask(tmp_path):
    """Killed the mutants that change or drop the lock file's mode (0777 without it)."""
    before = os.umask(0)
    try:
        fd = lock_file.acquire(tmp_path / ".x.lock", wait=False)
    finally:
        os.umask(before)
    assert os.fstat(fd).st_mode & 0o777 == 0o644
    lock_file.release(tmp_path / ".x.lock", fd)


def test_an_interrupted_wait_raises_what_interrupted_it_and_leaves_no_descriptor(tmp_path, monkeypatch):
    """Killed the mutant that closes None instead of the file when the wait is interrupted (a
    TypeError then replaced the Ctrl-C)."""
    import pytest

    def interrupted(fd, how):
        opened.append(fd)
        raise KeyboardInterrupt
    opened = []
    monkeypatch.setattr(lock_file.fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lock_file.acquire(tmp_path / ".x.lock", wait=True)
    with pytest.raises(OSError):
        os.fstat(opened[0])         # closed
