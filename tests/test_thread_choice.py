"""The thread count and waiting policy (edge_sel/threads.py) function by function, without
starting a command: the load stated or sampled (psutil stood in for), the count other work leaves
free and the line that says why, what a run records, a resumed run's count kept, and what a
process that never chose reports. Milliseconds each."""

import os
import sys
import types

import pytest
import torch

from edge_sel import threads
from edge_sel.errors import InputError
from edge_sel.threads import LOAD_ENV, WAIT_ENV, choose_threads, passive_waiting, stated_load
from helpers import needs_ort

read_quota = threads.cgroup_cpu_quota


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No stated load, no OMP_NUM_THREADS, no sample, no choice made, and torch's count put back
    afterwards."""
    monkeypatch.delenv(LOAD_ENV, raising=False)
    monkeypatch.delenv(threads.OMP_THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "_sampled", [])
    monkeypatch.setattr(threads, "_chosen", {})
    monkeypatch.setattr(threads, "_requested", [])
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)       # this machine's own quota left out
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


@pytest.mark.parametrize("text, count", [("1", 1), (" 4 ", 4), ("0", None), ("-2", None), ("two", None),
                                         ("", None), ("1.5", None)])
def test_omp_num_threads_counts_only_as_a_positive_integer(text, count):
    """Mutants: > 0 as >= 0 or > 1, the value or the test dropped, another default than empty."""
    assert threads.omp_threads({"OMP_NUM_THREADS": text}) == count
    assert threads.omp_threads({}) is None


def test_omp_num_threads_is_read_from_the_process_and_counts_as_given(monkeypatch):
    """Mutants: the process environment not read, OMP_NUM_THREADS not marking the count as given
    (a resume would then replace it by the recorded one)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.omp_threads({"OMP_NUM_THREADS": "1"}) == 1       # a given mapping wins over the process's
    assert threads.omp_threads() == 3
    assert choose_threads(cpus=8, load=0.0) == (3, "OMP_NUM_THREADS 3")
    assert threads.apply_threads()["count"] == 3 and torch.get_num_threads() == 3
    assert threads._requested == [True]
    assert threads.keep_recorded({"count": 1, "why": "start"}) is None and torch.get_num_threads() == 3


def test_waiting_turns_passive_at_half_a_busy_cpu_unless_the_variable_is_set(monkeypatch):
    """Mutants: >= as > at the 0.5 boundary, the policy's name, the sampled load not asked when no
    load is given, the environment defaulting to os.environ."""
    env = {}
    assert passive_waiting(env, load=0.5) == "PASSIVE" and env == {WAIT_ENV: "PASSIVE"}
    env = {}
    assert passive_waiting(env, load=0.49) == "default" and env == {}
    assert passive_waiting({WAIT_ENV: "ACTIVE"}, load=3.0) == "ACTIVE"
    monkeypatch.setattr(threads, "other_load", lambda: 0.7)
    env = {}
    assert passive_waiting(env) == "PASSIVE" and env == {WAIT_ENV: "PASSIVE"}
    monkeypatch.delenv(WAIT_ENV, raising=False)
    assert passive_waiting() == "PASSIVE" and os.environ[WAIT_ENV] == "PASSIVE"
    monkeypatch.delenv(WAIT_ENV)
    monkeypatch.setattr(threads, "other_load", lambda: 0.2)
    assert passive_waiting() == "default" and WAIT_ENV not in os.environ
    assert threads.BUSY_FOR_PASSIVE == 0.5


def test_the_usable_cpus_are_this_process_affinity_or_the_cpu_count(monkeypatch):
    assert threads.usable_cpus() == len(os.sched_getaffinity(0))

    def no_affinity(pid):
        raise OSError("not here")
    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert threads.usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads.usable_cpus() == 1
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.usable_cpus() == 3


@pytest.mark.parametrize("text, value", [("1", 1.0), (" 0.5 ", 0.5), ("0", 0.0), ("999999.5", 999999.5)])
def test_a_stated_load_is_a_number_of_cpus(text, value):
    assert stated_load({LOAD_ENV: text}) == value


@pytest.mark.parametrize("text", ["lots", "-0.5", "1e6", "nan", "inf"])
def test_a_stated_load_that_is_not_one_is_refused_in_one_line(text):
    with pytest.raises(InputError) as e:
        stated_load({LOAD_ENV: text})
    assert str(e.value) == (f"environment variable EDGE_SEL_OTHER_LOAD={text!r}: give the CPUs other work keeps "
                            f"busy, a number >= 0 (e.g. 0, 0.5 or 1)")


def test_no_stated_load_is_none_and_the_process_environment_is_read(monkeypatch):
    assert stated_load({}) is None and stated_load({LOAD_ENV: "  "}) is None
    assert stated_load() is None
    monkeypatch.setenv(LOAD_ENV, "2.5")
    assert stated_load() == 2.5


def test_the_load_is_the_stated_one_or_one_sample_of_this_process_cpus(monkeypatch):
    """Mutants: the sample's interval, percent to CPUs, sampled once, the CPUs outside this
    process's affinity set counted (busy CPUs it cannot run on took nothing from it)."""
    calls = []
    psutil = types.ModuleType("psutil")
    psutil.cpu_percent = lambda interval, percpu: calls.append((interval, percpu)) or [90.0, 10.0, 50.0, 100.0]
    monkeypatch.setitem(sys.modules, "psutil", psutil)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 2, 7})      # 7: a CPU the sample lacks
    monkeypatch.setenv(LOAD_ENV, "0.25")
    assert threads.other_load() == 0.25 and calls == []
    monkeypatch.delenv(LOAD_ENV)
    assert threads.other_load() == pytest.approx(0.6) and calls == [(0.25, True)]
    assert threads.other_load() == pytest.approx(0.6) and calls == [(0.25, True)]      # once per process
    monkeypatch.setattr(threads, "_sampled", [])
    monkeypatch.delattr(os, "sched_getaffinity")                    # no affinity call: every CPU
    assert threads.other_load() == pytest.approx(2.5)


def cgroup(tmp_path, membership, files):
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self").write_text(membership)
    return read_quota(root, tmp_path / "self")


def test_a_cgroup_v2_quota_is_the_tightest_cpu_max_of_the_cgroup_and_those_above(tmp_path):
    """Mutants: quota over period, "max" as no limit, the parents not walked, the cgroup root's
    parent walked into, the least instead of the tightest."""
    files = {"a/b/cpu.max": "150000 100000\n", "a/cpu.max": "300000 100000\n", "cpu.max": "max 100000\n"}
    assert cgroup(tmp_path, "0::/a/b\n", files) == 1.5
    assert cgroup(tmp_path, "0::/a/b\n", {**files, "a/cpu.max": "50000 100000"}) == 0.5
    assert cgroup(tmp_path, "0::/a/b\n", {**files, "a/b/cpu.max": "max 100000", "a/cpu.max": "max 100000"}) is None
    assert cgroup(tmp_path, "0::/\n", {"cpu.max": "200000 100000"}) == 2.0        # a container's namespace
    (tmp_path / "cgroup" / "cpu.max").write_text("torn")
    assert read_quota(tmp_path / "cgroup", tmp_path / "self") is None
    (tmp_path / "cpu.max").write_text("10000 100000")                             # above the cgroup root
    assert read_quota(tmp_path / "cgroup", tmp_path / "self") is None
    assert read_quota(tmp_path / "cgroup", tmp_path / "none") is None             # no membership to read


def test_a_cgroup_v1_quota_is_the_cfs_quota_over_its_period(tmp_path):
    files = {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
             "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert cgroup(tmp_path, "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n0::/\n", files) == 0.5
    assert cgroup(tmp_path, "3:cpuacct:/docker/x\n", files) is None              # not the cpu controller
    files = {"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}
    assert cgroup(tmp_path, "1:cpu:/\n", files) == 2.5
    assert cgroup(tmp_path, "1:cpu:/\n", {**files, "cpu/cpu.cfs_period_us": "0"}) is None


@pytest.mark.parametrize("quota, count, said", [(None, 8, ""), (16.0, 8, ""), (8.0, 8, ""), (2.4, 2, ", 2 within"),
                                                (1.5, 2, ", 2 within"), (0.3, 1, ", 1 within")])
def test_the_count_stays_within_a_cgroup_cpu_quota(quota, count, said):
    got, why = choose_threads(cpus=8, load=0.0, quota=quota)
    assert got == count
    assert why == f"8 CPUs, 0.00 busy with other work at the start: 8 free" + (
        f"{said} the cgroup's CPU quota of {quota:g}" if said else "")


def test_the_quota_is_read_when_not_given(monkeypatch):
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 1.0)
    assert choose_threads(cpus=4, load=0.0) == (1, "4 CPUs, 0.00 busy with other work at the start: 4 free, 1 within "
                                                   "the cgroup's CPU quota of 1")


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "1\u00b2"])
def test_omp_num_threads_in_digits_openmp_cannot_read_is_refused_in_one_line(text):
    with pytest.raises(InputError) as e:
        threads.omp_threads({"OMP_NUM_THREADS": text})
    assert str(e.value) == (f"environment variable OMP_NUM_THREADS={text!r}: OpenMP reads a count in ASCII digits "
                            f"(e.g. 4); set one or unset the variable")


@needs_ort
def test_onnx_runtime_threads_stop_spinning_where_waiting_is_passive(monkeypatch):
    import onnxruntime as ort
    for policy in ("PASSIVE", " passive "):
        monkeypatch.setenv(WAIT_ENV, policy)
        options = ort.SessionOptions()
        assert threads.ort_waits_like_openmp(options) is options
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for policy in ("ACTIVE", None):
        if policy is None:
            monkeypatch.delenv(WAIT_ENV)
        else:
            monkeypatch.setenv(WAIT_ENV, policy)
        with pytest.raises(RuntimeError, match="does not have configuration"):       # ORT's own default
            threads.ort_waits_like_openmp(ort.SessionOptions()).get_session_config_entry(
                "session.intra_op.allow_spinning")
    assert threads.waiting_is_passive({WAIT_ENV: "PASSIVE"}) and not threads.waiting_is_passive({})


@needs_ort
def test_both_backends_sessions_take_the_waiting_policy(monkeypatch, tmp_path):
    """Training (backends/ort_backend.py) and predicting (predict/ort_session.py) build their options
    through ort_waits_like_openmp."""
    import onnxruntime as ort

    from edge_sel.backends.ort_backend import session_options
    from edge_sel.predict import ort_session
    monkeypatch.setenv(WAIT_ENV, "PASSIVE")
    assert session_options().get_session_config_entry(threads.ORT_SPINNING) == "0"
    seen = []
    monkeypatch.setattr(ort, "InferenceSession", lambda path, options, providers: seen.append(options) or "s")
    (tmp_path / "model.onnx").write_bytes(b"")
    assert ort_session.session(tmp_path / "model.onnx", 2) == "s"
    assert seen[0].get_session_config_entry(threads.ORT_SPINNING) == "0" and seen[0].intra_op_num_threads == 2


@pytest.mark.parametrize("cpus, load, free", [(4, 0.1, 4), (4, 0.5, 4), (4, 0.51, 3), (4, 2.0, 2), (2, 1.5, 1),
                                              (2, 3.9, 1), (8, 0.0, 8), (3, 1.49, 2), (1, 0.9, 1)])
def test_the_count_is_the_cpus_other_work_leaves_free_rounded_at_least_one(cpus, load, free):
    """Mutants: the rounding (+ 0.5, int), the floor of one, the ceiling of the CPUs."""
    count, why = choose_threads(cpus=cpus, load=load)
    assert count == free
    assert why == f"{cpus} CPUs, {load:.2f} busy with other work at the start: {free} free"


def test_a_negative_load_never_gives_more_threads_than_cpus():
    assert choose_threads(cpus=2, load=-3.0)[0] == 2


def test_a_requested_count_wins_and_says_where_it_came_from():
    assert choose_threads(3, cpus=2, load=5.0) == (3, "--threads 3")
    assert choose_threads("2", cpus=8, load=0.0, source="cpu_threads of profile jetson") == (
        2, "cpu_threads of profile jetson 2")
    assert choose_threads(0, cpus=2, load=0.0)[1].startswith("2 CPUs")           # 0 is no request


def test_the_cpus_and_load_default_to_the_machines_and_a_stated_load_says_so(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 6)
    monkeypatch.setattr(threads, "other_load", lambda: 2.0)
    assert choose_threads() == (4, "6 CPUs, 2.00 busy with other work at the start: 4 free")
    monkeypatch.setenv(LOAD_ENV, "1")
    monkeypatch.setattr(threads, "other_load", lambda: 1.0)
    assert choose_threads() == (5, "6 CPUs, 1.00 busy with other work stated in EDGE_SEL_OTHER_LOAD: 5 free")
    assert choose_threads(load=1.0)[1].endswith("at the start: 5 free")      # a load given is no statement


def test_applying_gives_torch_the_count_and_records_it(monkeypatch):
    monkeypatch.setenv(WAIT_ENV, "PASSIVE")
    record = threads.apply_threads(cpus=4, load=1.0)
    assert record == {"count": 3, "why": "4 CPUs, 1.00 busy with other work at the start: 3 free",
                      "wait_policy": "PASSIVE"}
    assert torch.get_num_threads() == 3 and threads.describe() == record and threads._requested == [False]
    record["count"] = 99
    assert threads.describe()["count"] == 3
    monkeypatch.delenv(WAIT_ENV)
    again = threads.apply_threads(2, cpus=4, load=0.0)
    assert again == {"count": 2, "why": "--threads 2", "wait_policy": "OpenMP's default (spinning)"}
    assert torch.get_num_threads() == 2 and threads._requested == [True]
    profile = threads.apply_threads(1, source="cpu_threads of profile jetson", cpus=4, load=0.0)
    assert profile["why"] == "cpu_threads of profile jetson 1" and torch.get_num_threads() == 1


def test_a_process_that_never_chose_reports_torchs_own(monkeypatch):
    monkeypatch.delenv(WAIT_ENV, raising=False)
    torch.set_num_threads(2)
    assert threads.describe() == {"count": 2, "why": "torch's default (not chosen here)",
                                  "wait_policy": "OpenMP's default (spinning)"}
    monkeypatch.setenv(WAIT_ENV, "PASSIVE")
    assert threads.describe()["wait_policy"] == "PASSIVE"
    monkeypatch.delitem(sys.modules, "torch")
    assert threads.describe()["count"] is None


def test_a_resumed_run_keeps_its_recorded_count_unless_this_process_was_given_one(monkeypatch):
    """Mutants: each condition that leaves the count alone (a request, no count, a bool, below one,
    already in force), the count set, the count before returned, the record's words."""
    monkeypatch.setenv(WAIT_ENV, "PASSIVE")
    threads.apply_threads(cpus=4, load=3.0)                  # one thread chosen here
    assert torch.get_num_threads() == 1
    recorded = {"count": 2, "why": "4 CPUs, 2.00 busy with other work at the start: 2 free"}
    assert threads.keep_recorded(recorded) == 1
    assert torch.get_num_threads() == 2
    assert threads.describe() == {"count": 2, "why": "kept from the run's start (4 CPUs, 2.00 busy with other work "
                                                     "at the start: 2 free): a resumed run sums as an unbroken one "
                                                     "only on the same thread count", "wait_policy": "PASSIVE"}
    assert threads.keep_recorded(recorded) is None            # already in force
    for bad in [None, "2", {}, {"count": "2"}, {"count": True}, {"count": 0}, {"count": -1}, {"count": 1.5}]:
        torch.set_num_threads(1)
        assert threads.keep_recorded(bad) is None and torch.get_num_threads() == 1, bad
    threads.apply_threads(3, cpus=4, load=0.0)                # --threads 3 given to this process
    assert threads.keep_recorded({"count": 1, "why": "x"}) is None and torch.get_num_threads() == 3
    monkeypatch.delenv(WAIT_ENV)
    monkeypatch.setattr(threads, "_requested", [])
    assert threads.keep_recorded({"count": 1}) == 3
    assert threads.describe()["wait_policy"] == "OpenMP's default (spinning)"
    assert threads.describe()["why"].startswith("kept from the run's start (None)")
