"""mimalloc under budgeted commands (edge_sel/allocator.py, engine/machine/mimalloc.py): which command
lines start again on it, once, and what a budgeted run asks of it while planning and training. A real
budgeted command on mimalloc runs in test_memory_plan's start-again test."""

import os
import sys
from pathlib import Path

import pytest

from edge_sel import allocator
from edge_sel.engine.machine import cpu_pool, mimalloc, peak_memory


@pytest.mark.parametrize("args,wanted", [
    (["finetune", "--memory-budget", "40", "--epochs", "1"], True),
    (["finetune", "--epochs", "1", "--memory-budget=40"], True),
    (["finetune", "--epochs", "1"], False),
    (["bench", "transfer", "--seeds", "1"], False),      # its budgeted rows' processes are (below)
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


def test_a_benchs_budgeted_rows_start_on_mimalloc_and_its_others_on_glibc(tmp_path, monkeypatch):
    """Each row's spawned process gets the environment of the moment it starts: a budgeted row's
    preloads mimalloc, an unbudgeted row's does not (as the command line runs them); the bench's own
    environment is left as it was."""
    from edge_sel.bench import bench_run
    from edge_sel.config import TrainConfig
    lib = tmp_path / "libmimalloc.so.3"
    lib.write_bytes(b"")
    monkeypatch.setenv(allocator.VARIABLE, str(lib))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    seen = []

    class Pool:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, *a):
            seen.append(os.environ.get("LD_PRELOAD"))
            return type("Done", (), {"result": lambda self: None})()
    monkeypatch.setattr(bench_run, "ProcessPoolExecutor", Pool)
    before = dict(os.environ)
    for budget in (40.0, None):
        bench_run.finetune_alone(tmp_path, None, TrainConfig(memory_budget_mb=budget), tmp_path / "run")
    assert seen == [str(lib), None] and dict(os.environ) == before


def test_the_library_is_asked_for_by_name_or_path_never_by_default():
    assert allocator.library({}) is None and start({}) == []
    found = allocator.library({allocator.VARIABLE: "mimalloc"})
    if found is not None:       # the alloc extra, on Linux
        assert found.name.startswith("libmimalloc.so.") and found.is_file()
    assert allocator.library({allocator.VARIABLE: "/opt/mi.so"}) == Path("/opt/mi.so")
    assert allocator.library({allocator.VARIABLE: "glibc"}) is None


def test_only_the_mimalloc_started_for_a_budget_turns_to_glibc():
    """A refusal on mimalloc starts again on glibc only where this process was started on it for its
    budget: never where the user preloads a library of their own."""
    ours = {allocator.STARTED_WITH: "/lib/mi.so", "LD_PRELOAD": "/lib/mi.so", allocator.VARIABLE: "mimalloc", "X": "1"}
    assert allocator.runs_on_ours(ours) and allocator.on_glibc_instead(ours)
    assert ours == {allocator.VARIABLE: "glibc", "X": "1"} and not allocator.runs_on_ours(ours)
    assert not allocator.on_glibc_instead(ours)
    theirs = {allocator.STARTED_WITH: "/lib/mi.so", "LD_PRELOAD": "/their/lib.so"}
    assert not allocator.on_glibc_instead(theirs) and theirs["LD_PRELOAD"] == "/their/lib.so"
    assert not allocator.runs_on_ours({}) and not allocator.runs_on_ours({"LD_PRELOAD": "/lib/mi.so"})
    # the start made on glibc never starts again on mimalloc
    assert start({allocator.VARIABLE: "glibc"}) == []


class FakeMimalloc:
    """mimalloc's functions a run calls, recorded."""

    def __init__(self):
        self.calls = []

    def mi_collect(self, force):
        self.calls.append(("collect", force))

    def mi_option_set(self, option, value):
        assert option == mimalloc.PURGE_DELAY_OPTION
        self.calls.append(("purge delay", value))

    def mi_option_get(self, option):
        assert option == mimalloc.PURGE_DELAY_OPTION
        return 1000

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
    assert peak_memory.training_note(False, 0.0) == (
        "mimalloc 3.4.3 while training: a step reuses the blocks the step before freed, pages freed 1000 ms ago "
        "go back to the system")
    monkeypatch.setattr(mimalloc, "library", lambda: None)
    assert peak_memory.allocator_name() == "glibc"
    assert peak_memory.training_note(False, 3.0).startswith("the pages of torch's freed blocks of 64 KiB and more kept "
                                                            "and cut into later blocks") and "1.0 MiB above" in \
        peak_memory.training_note(False, 3.0)
    monkeypatch.setattr(cpu_pool, "library", lambda: None)
    monkeypatch.setattr(cpu_pool, "_unavailable", ["no C++ compiler (c++) on the PATH"])
    assert peak_memory.training_note(False, 3.0).startswith("freed blocks of 64 KiB and more go back to the system")
    assert peak_memory.training_note(False, 3.0).endswith("no pool of freed blocks: no C++ compiler (c++) on the PATH)")


def test_on_mimalloc_windows_open_on_pages_handed_back_and_a_budgeted_evaluation_purges_sooner(monkeypatch):
    """mimalloc keeps freed pages a second: an evaluation right after training (blocks of other
    sizes) measured both phases' pages (Lite0 at 96 px under 1/4: 135.5 MiB against 123.9). Each
    window opens once the phase before has handed its freed pages back, and a budgeted run's
    evaluation hands pages back 10 ms after they are freed (at 1 s: 130 MiB), the delay as it was after."""
    from types import SimpleNamespace
    from edge_sel.engine.loop import bank_passes
    from edge_sel.engine.loop.memory_records import RunMemory
    fake = FakeMimalloc()
    monkeypatch.setattr(mimalloc, "library", lambda: fake)
    opened = []
    meter = SimpleNamespace(begin=lambda base: opened.append(list(fake.calls)) or "window", end=lambda w: 1.0)
    trainer = SimpleNamespace(meter=SimpleNamespace(begin=lambda phase: None, end=lambda phase: {}),
                              run_memory=SimpleNamespace(meter=meter, base=0),
                              budget=SimpleNamespace(clock=lambda: 0.0), config=SimpleNamespace(memory_budget_mb=None))
    with bank_passes.metered(trainer):
        pass
    memory = RunMemory.__new__(RunMemory)
    memory.meter, memory.base, memory.window = meter, 0, None
    memory.begin_epoch()
    assert opened == [[("collect", True)], [("collect", True)] * 2]
    fake.calls.clear()
    trainer.config.memory_budget_mb = 123.9
    with bank_passes.metered(trainer):
        inside = list(fake.calls)
    assert inside == [("collect", True), ("purge delay", 10)]
    assert fake.calls == [*inside, ("purge delay", 1000)]


def test_on_glibc_a_budgeted_evaluation_pools_freed_blocks_with_no_slack(monkeypatch):
    """Evaluations measured the higher peaks with the pool's training slack (mobilenetv2 at 32 px under
    40 MiB: 36.1-37.1 MiB against training's 31.9-33.0); a budgeted run's evaluation keeps freed blocks
    no higher than the most it asks at once, the training slack as it was after, whatever ends it."""
    from edge_sel.engine.loop import bank_passes
    from types import SimpleNamespace
    monkeypatch.setattr(mimalloc, "library", lambda: None)
    calls = []
    monkeypatch.setattr(cpu_pool, "keep", lambda slack: calls.append(slack) or slack is not None)
    monkeypatch.setattr(cpu_pool, "empty", lambda: calls.append("empty"))
    monkeypatch.setattr(cpu_pool, "slack_bytes", lambda: 3 * 2 ** 20)
    meter = SimpleNamespace(begin=lambda base: "window", end=lambda w: 1.0)
    trainer = SimpleNamespace(meter=SimpleNamespace(begin=lambda phase: None, end=lambda phase: {}),
                              run_memory=SimpleNamespace(meter=meter, base=0),
                              budget=SimpleNamespace(clock=lambda: 0.0), config=SimpleNamespace(memory_budget_mb=None))
    with bank_passes.metered(trainer):
        assert calls == ["empty"]           # unbudgeted: the pool is not asked
    calls.clear()
    trainer.config.memory_budget_mb = 40.0
    with pytest.raises(RuntimeError):
        with bank_passes.metered(trainer):
            assert calls == ["empty", 0]
            raise RuntimeError("an evaluation that fails")
    assert calls == ["empty", 0, 3 * 2 ** 20]


def test_the_planner_times_steps_pooled_with_no_slack_and_leaves_the_pool_as_it_was(monkeypatch):
    """Unmapped, a step of Lite0's norms in micro-batches of one image timed 1.28-1.37 s; pooled, as the
    run then trains it, 0.83-1.00 s: the planner's costs are taken as the run will run."""
    monkeypatch.setattr(mimalloc, "library", lambda: None)
    calls = []
    monkeypatch.setattr(cpu_pool, "keep", lambda slack: calls.append(slack) or slack is not None)
    monkeypatch.setattr(cpu_pool, "loaded", lambda: True)
    for before in (None, 2 ** 20):
        monkeypatch.setattr(cpu_pool, "slack_bytes", lambda before=before: before)
        calls.clear()
        with peak_memory.pooled_while_timing():
            assert calls == [0]
        assert calls == [0, before]
    monkeypatch.setattr(cpu_pool, "loaded", lambda: False)         # no budget: the pool is not built for it
    calls.clear()
    with peak_memory.pooled_while_timing():
        pass
    assert calls == []
