"""mimalloc under budgeted commands (edge_sel/allocator.py, engine/machine/mimalloc.py): which command
lines start again on it, once, and what a budgeted run asks of it while planning and training. A real
budgeted command on mimalloc runs in test_memory_plan's start-again test."""

import sys
from pathlib import Path

import pytest

from edge_sel import allocator
from edge_sel.engine.machine import mimalloc, peak_memory


@pytest.mark.parametrize("args,wanted", [
    (["finetune", "--memory-budget", "40", "--epochs", "1"], True),
    (["finetune", "--epochs", "1", "--memory-budget=40"], True),
    (["finetune", "--epochs", "1"], False),
    (["bench", "transfer", "--seeds", "1"], True),
    (["bench", "memory"], True),
    (["bench", "speed"], False),
    (["pretrain", "--memory-budget", "40"], False),
    ([], False)])
def test_budgeted_commands_want_mimalloc(args, wanted):
    assert allocator.wanted(args) is wanted


@pytest.mark.parametrize("first,own", [
    ("/venv/bin/edge-sel", True), ("/src/edge_sel/__main__.py", True), ("/venv/lib/pytest/__main__.py", False),
    ("-c", False), ("/venv/bin/pytest", False)])
def test_only_the_command_itself_starts_again(first, own):
    assert allocator.console_command([first, "finetune"]) is own


def start(environ, argv=("/venv/bin/edge-sel", "finetune", "--memory-budget", "40")):
    replaced = []
    allocator.start_with_mimalloc(list(argv), environ, lambda exe, args: replaced.append((exe, args)))
    return replaced


def test_a_budgeted_command_starts_again_once_with_mimalloc_preloaded(tmp_path, monkeypatch):
    lib = tmp_path / "libmimalloc.so.3"
    lib.write_bytes(b"")
    monkeypatch.setattr(sys, "orig_argv", ["python", "/venv/bin/edge-sel", "finetune", "--memory-budget", "40"])
    environ = {allocator.VARIABLE: str(lib)}
    assert start(environ) == [(sys.executable, [sys.executable, "/venv/bin/edge-sel", "finetune", "--memory-budget",
                                                "40"])]
    assert environ["LD_PRELOAD"] == environ[allocator.STARTED_WITH] == str(lib)
    assert environ[allocator.PURGE_DELAY] == str(allocator.PURGE_DELAY_MS) and environ[allocator.EAGER_COMMIT] == "0"
    assert start(environ) == []                                    # the start made again: never a third
    said = {allocator.VARIABLE: str(lib), allocator.PURGE_DELAY: "5"}
    start(said)
    assert said[allocator.PURGE_DELAY] == "5"                      # the user's own setting stands
    assert start({allocator.VARIABLE: str(lib), "LD_PRELOAD": "/their/lib.so"}) == []    # the user's preload stands
    assert start({allocator.VARIABLE: "glibc"}) == []
    assert start({allocator.VARIABLE: str(lib)}, argv=("/venv/bin/edge-sel", "finetune")) == []
    assert start({allocator.VARIABLE: str(lib)}, argv=("/venv/bin/pytest", "finetune", "--memory-budget", "4")) == []


def test_the_library_is_the_installed_wheels_unless_named_or_turned_off():
    found = allocator.library({})
    if found is not None:       # installed with the package on Linux
        assert found.name.startswith("libmimalloc.so.") and found.is_file()
    assert allocator.library({allocator.VARIABLE: "/opt/mi.so"}) == Path("/opt/mi.so")
    assert allocator.library({allocator.VARIABLE: "glibc"}) is None


class FakeMimalloc:
    """mimalloc's functions a run calls, recorded."""

    def __init__(self):
        self.calls = []

    def mi_collect(self, force):
        self.calls.append(("collect", force))

    def mi_option_set(self, option, value):
        pytest.fail("the purge delay changed while running")

    def mi_option_get(self, option):
        assert option == mimalloc.PURGE_DELAY_OPTION
        return 100

    def mi_version(self):
        return 30403


def test_on_mimalloc_each_phase_hands_back_what_the_one_before_freed(monkeypatch):
    """Before planning, before training (what planning freed is not the run's) and at the run's end,
    every freed page goes back; glibc's thresholds are left alone, and the purge delay the process
    started with stands (steps reuse what the step before freed)."""
    fake = FakeMimalloc()
    monkeypatch.setattr(mimalloc, "library", lambda: fake)
    monkeypatch.setattr(peak_memory, "set_mmap_threshold", lambda *a: pytest.fail("glibc's setting on mimalloc"))
    assert peak_memory.allocator_for_budget() and fake.calls == [("collect", True)]
    assert peak_memory.allocator_for_training(False, 0) is True and len(fake.calls) == 2
    assert peak_memory.allocator_after_training() and peak_memory.release_free_heap() and len(fake.calls) == 4
    assert peak_memory.allocator_name() == "mimalloc 3.4.3"
    assert peak_memory.training_note(False, 0.0) == ("mimalloc 3.4.3 while training: a step reuses the blocks the "
                                                      "step before freed, pages freed 100 ms ago go back to the system")
    monkeypatch.setattr(mimalloc, "library", lambda: None)
    assert peak_memory.allocator_name() == "glibc" and peak_memory.training_note(False, 0.0).startswith("freed blocks")
