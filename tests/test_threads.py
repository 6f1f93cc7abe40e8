"""Threads and waiting chosen for a CPU that other work shares (edge_sel/threads.py)."""

import json

import pytest

from helpers import run_cli
from edge_sel.threads import OMP_THREADS_ENV, WAIT_ENV, choose_threads, passive_waiting


@pytest.fixture(autouse=True)
def no_given_count(monkeypatch):
    """The automatic choice under test: without the OMP_NUM_THREADS the suite pins (tests/conftest.py)."""
    monkeypatch.delenv(OMP_THREADS_ENV, raising=False)


def test_threads_are_what_other_work_leaves_free_and_an_explicit_count_wins():
    assert choose_threads(cpus=4, load=0.1, quota=None)[0] == 4
    assert choose_threads(cpus=4, load=2.0, quota=None)[0] == 2
    count, why = choose_threads(cpus=2, load=3.9)          # two busy processes and more: still one thread
    assert count == 1 and "3.90 busy" in why
    assert choose_threads(3, cpus=2, load=5.0) == (3, "--threads 3")


def test_omp_num_threads_is_a_given_count(monkeypatch):
    """A launcher's or the user's OMP_NUM_THREADS is kept (torchrun gives each rank one; a count
    chosen over it would put every rank on every free CPU); --threads still wins, and a value OpenMP
    would ignore is ignored."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(cpus=4, load=0.0) == (1, "OMP_NUM_THREADS 1")
    assert choose_threads(3, cpus=4, load=0.0) == (3, "--threads 3")
    for ignored in ("0", "two", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert choose_threads(cpus=4, load=1.0, quota=None)[0] == 3


def test_waiting_is_passive_when_other_work_is_busy_unless_the_user_chose():
    env = {}
    assert passive_waiting(env, load=1.2) == "PASSIVE" and env[WAIT_ENV] == "PASSIVE"
    env = {}
    assert passive_waiting(env, load=0.1) == "default" and WAIT_ENV not in env     # a quiet CPU: OpenMP's own
    env = {WAIT_ENV: "ACTIVE"}
    assert passive_waiting(env, load=1.9) == "ACTIVE"


def test_huge_pages_are_asked_for_where_the_kernel_gives_them_unless_the_user_chose():
    from edge_sel.huge_pages import VARIABLE, kernel_setting, large_blocks_in_huge_pages
    env = {}
    assert large_blocks_in_huge_pages(env, "madvise")["on"] and env[VARIABLE] == "1"
    env = {}
    assert not large_blocks_in_huge_pages(env, "never")["on"] and VARIABLE not in env
    env = {VARIABLE: "0"}
    assert not large_blocks_in_huge_pages(env, "always")["on"] and env[VARIABLE] == "0"
    enabled = __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "enabled"
    enabled.write_text("always [madvise] never\n")
    assert kernel_setting(enabled) == "madvise" and kernel_setting(enabled.parent / "none") is None


def test_a_runs_config_and_summary_state_the_threads_and_the_policy(tmp_path, monkeypatch):
    from edge_sel import threads
    monkeypatch.delenv("EDGE_SEL_THREADS", raising=False)
    monkeypatch.setattr(threads, "other_load", lambda: 7.5)      # a busy machine: one thread
    out = tmp_path / "run"
    run_cli("pretrain", "--model", "edgecnn", "--dataset", "digits", "--epochs", "1", "--subset", "200",
            "--out", out, "--quiet", "--anchors-per-class", "0")
    for name in ("config.json", "summary.json"):
        stated = json.loads((out / name).read_text())["threads"]
        assert stated["count"] == 1 and "7.50 busy" in stated["why"] and stated["wait_policy"]
        # And whether torch's large CPU blocks were asked for on huge pages, and why.
        pages = json.loads((out / name).read_text())["huge_pages"]
        assert isinstance(pages["on"], bool) and pages["why"]
    run_cli("pretrain", "--model", "edgecnn", "--dataset", "digits", "--epochs", "1", "--subset", "200",
            "--out", tmp_path / "two", "--quiet", "--anchors-per-class", "0", "--threads", "2")
    stated = json.loads((tmp_path / "two" / "summary.json").read_text())["threads"]
    assert stated["count"] == 2 and stated["why"].startswith("--threads")


def test_a_resumed_run_keeps_the_thread_count_it_started_with_unless_told(tmp_path, monkeypatch):
    """Float sums depend on how work is split between threads: a run resumed on another count would
    not end as the unbroken run. A count given at the resume wins, and is said."""
    import torch

    from edge_sel import threads
    from edge_sel.engine.loop import trainer as trainer_mod
    monkeypatch.delenv("EDGE_SEL_THREADS", raising=False)
    monkeypatch.setattr(threads, "other_load", lambda: 7.5)      # busy at the start: one thread
    # Two CPUs, whatever this process may run on: on one (taskset -c 0) the quiet resume would choose
    # one thread too, and nothing would be kept.
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    args = ["pretrain", "--model", "edgecnn", "--dataset", "digits", "--epochs", "2", "--subset", "200",
            "--quiet", "--anchors-per-class", "0"]
    out = tmp_path / "run"
    run_cli(*args, "--out", out)

    def mark_interrupted():     # as a run stopped by a signal after its last checkpoint leaves it
        (out / "summary.json").write_text(json.dumps({**json.loads((out / "summary.json").read_text()),
                                                      "stop_reason": "interrupted"}))
    mark_interrupted()
    seen = []
    original = trainer_mod.Trainer.run

    def run(self, *a, **k):
        seen.append(torch.get_num_threads())
        return original(self, *a, **k)
    monkeypatch.setattr(trainer_mod.Trainer, "run", run)
    monkeypatch.setattr(threads, "other_load", lambda: 0.0)      # quiet now: two would be free
    before = torch.get_num_threads()
    run_cli("pretrain", "--resume", out, "--quiet")
    assert seen == [1] and torch.get_num_threads() == before
    stated = json.loads((out / "summary.json").read_text())["threads"]
    assert stated["count"] == 1 and stated["why"].startswith("kept from the run's start") and "7.50 busy" in stated["why"]
    mark_interrupted()
    run_cli("pretrain", "--resume", out, "--quiet", "--threads", "2")
    assert seen == [1, 2]
    assert json.loads((out / "summary.json").read_text())["threads"]["why"] == "--threads (or the profile's cpu_threads) 2"


def test_the_command_line_waits_passively_beside_a_busy_process(tmp_path):
    import subprocess
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    from contention import busy
    # The policy is printed with whether torch (and so OpenMP, which reads it once) was loaded when
    # the command line set it: a policy set after that would be printed and never used.
    probe = ("import os, sys, edge_sel.threads as t\n"
             "chosen = t.passive_waiting\n"
             "def spy(*a, **k):\n"
             "    policy = chosen(*a, **k)\n"
             "    print('torch' in sys.modules, policy, os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
             "    return policy\n"
             "t.passive_waiting = spy\n"
             "import edge_sel.cli\n"
             "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    # The load sampled, not stated (the suite states 0 for its own runs).
    # Huge pages for torch's large blocks are asked for before torch too (it reads the variable once).
    from edge_sel.huge_pages import VARIABLE, kernel_setting
    thp = "None" if kernel_setting() in (None, "never") else "1"
    env = {k: v for k, v in __import__("os").environ.items() if k not in (WAIT_ENV, "EDGE_SEL_OTHER_LOAD", VARIABLE)}
    with busy(2):
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                              check=True).stdout.split("\n") == [f"False PASSIVE {thp}", "True PASSIVE", ""]
    env[WAIT_ENV] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          check=True).stdout.split("\n") == [f"False ACTIVE {thp}", "True ACTIVE", ""]


def test_a_stated_load_replaces_the_sample_and_a_bad_one_is_one_line(monkeypatch):
    import subprocess
    import sys
    from edge_sel import threads
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "1.5")
    assert threads.other_load() == 1.5
    count, why = choose_threads(cpus=2)
    assert count == 1 and "1.50 busy" in why and "EDGE_SEL_OTHER_LOAD" in why
    env = {k: v for k, v in __import__("os").environ.items() if k != WAIT_ENV}
    env["EDGE_SEL_OTHER_LOAD"] = "lots"
    bad = subprocess.run([sys.executable, "-m", "edge_sel", "--help"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "EDGE_SEL_OTHER_LOAD='lots'" in bad.stderr
    del env["EDGE_SEL_OTHER_LOAD"]
    env["OMP_NUM_THREADS"] = "\u00b2"            # a digit to Python, not to OpenMP (torch's loading would warn)
    bad = subprocess.run([sys.executable, "-m", "edge_sel", "--help"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == ("edge-sel: error: environment variable OMP_NUM_THREADS='\u00b2': OpenMP reads a count in "
                          "ASCII digits (e.g. 4); set one or unset the variable\n")


def test_supernodes_sharing_a_host_each_train_on_their_share_waiting_passively(tmp_path, monkeypatch):
    from edge_sel.fleet import launch
    monkeypatch.delenv("EDGE_SEL_THREADS", raising=False)
    monkeypatch.delenv(WAIT_ENV, raising=False)
    monkeypatch.setattr(launch, "usable_cpus", lambda: 8)
    env = launch.flower_env(tmp_path, nodes_here=3)
    assert (env["EDGE_SEL_THREADS"], env[WAIT_ENV]) == ("2", "PASSIVE")
    assert "EDGE_SEL_THREADS" not in launch.flower_env(tmp_path, nodes_here=1)     # a node alone: its own choice
    monkeypatch.setenv("EDGE_SEL_THREADS", "4")
    monkeypatch.setenv(WAIT_ENV, "ACTIVE")
    env = launch.flower_env(tmp_path, nodes_here=3)                                   # the user's settings win
    assert (env["EDGE_SEL_THREADS"], env[WAIT_ENV]) == ("4", "ACTIVE")


def test_the_contention_harness_keeps_cpus_busy_for_its_block_only():
    import psutil
    from edge_sel.bench.contention import busy, describe
    niced = min(19, __import__("os").nice(0) + 5)       # os.nice adds to the level of a suite run under nice
    with busy(2, nice=5) as procs:
        psutil.cpu_percent(interval=None)
        assert psutil.cpu_percent(interval=0.5) >= 100 * 1.5 / psutil.cpu_count()   # 1.5 CPUs busy or more
        assert all(p.poll() is None and psutil.Process(p.pid).nice() == niced for p in procs)
    assert all(p.poll() is not None for p in procs)
    assert describe(2, 5) == "beside 2 busy processes (nice 5)" and describe(0, 0) == "no other work started"
