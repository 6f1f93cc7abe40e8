"""The probe cache's rules (edge_sel/engine/machine/probe_cache.py) one function at a time, in
milliseconds: the machine and model keys, the load measured during a probe, which entries are
reused, kept or dropped, and the run's step time against the probe's. tests/test_probes.py runs
them inside the layout and precision probes."""

import json
import platform
import warnings
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edge_sel.engine.machine import probe_cache as pc


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cpuinfo(tmp_path, monkeypatch, text: str | bytes | None):
    root = tmp_path / "sys"
    (root / "proc").mkdir(parents=True)
    if text is not None:
        (root / "proc" / "cpuinfo").write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(root))


X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme
bugs\t\t: spectre_v1: mitigated

processor\t: 1
model name\t: Some Other CPU
"""
# An Orin's first processor block: no model name, the implementer and part name the core.
ARM = """processor\t: 0
BogoMIPS\t: 62.50
CPU implementer\t: 0x41
CPU part\t: 0xd42
Hardware\t: NVIDIA Jetson Orin Nano
a line without a colon
"""


def test_the_cpu_model_is_read_from_cpuinfo_the_first_processor_naming_it(tmp_path, monkeypatch):
    cpuinfo(tmp_path, monkeypatch, X86)
    assert pc.cpu_model() == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    cpuinfo(tmp_path / "arm", monkeypatch, ARM)
    assert pc.cpu_model() == "NVIDIA Jetson Orin Nano cpu implementer 0x41 cpu part 0xd42"
    cpuinfo(tmp_path / "bare", monkeypatch, "CPU implementer : 0x41\nCPU part : 0xd08\n")
    assert pc.cpu_model() == "cpu implementer 0x41 cpu part 0xd08"
    cpuinfo(tmp_path / "model", monkeypatch, "model\t: 85\n")
    assert pc.cpu_model() == "85"
    # A value may hold a colon; bytes that are not UTF-8 (a vendor's string) do not stop the read.
    cpuinfo(tmp_path / "odd", monkeypatch, b"vendor\t: \xff\xfe\nmodel name\t: Virtual CPU: rev 2\n")
    assert pc.cpu_model() == "Virtual CPU: rev 2"


def test_without_a_fake_root_the_cpu_model_is_this_machines(monkeypatch):
    monkeypatch.delenv("EDGE_SEL_SYSFS_ROOT", raising=False)
    text = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").is_file() else ""
    names = [line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")]
    if not names:
        pytest.skip("this machine's /proc/cpuinfo names no model")
    assert pc.cpu_model() == names[0]


def test_without_cpuinfo_the_architecture_names_the_cpu(tmp_path, monkeypatch):
    cpuinfo(tmp_path, monkeypatch, None)
    monkeypatch.setattr(platform, "processor", lambda: "x86_64")
    assert pc.cpu_model() == "x86_64"
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert pc.cpu_model() == "unknown CPU"


def test_the_machine_key_names_the_cpu_its_threads_and_torch(tmp_path, monkeypatch):
    cpuinfo(tmp_path, monkeypatch, X86)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert pc.machine_key("cpu") == f"cpu:x86_64:Intel(R) Xeon(R) CPU @ 2.20GHz:3 threads|torch {torch.__version__}"
    # A GPU is named by CUDA (no GPU is needed to name one here).
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU of {device}")
    assert pc.machine_key("cuda:0") == f"cuda:GPU of cuda:0|torch {torch.__version__}"


def test_the_model_key_is_the_structure_and_what_trains():
    def model(width=4, frozen=False):
        m = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
        m[0].weight.requires_grad_(not frozen)
        return m
    key = pc.model_key(model())
    assert len(key) == 16 and int(key, 16) >= 0
    assert pc.model_key(model()) == key                                  # other weights, same structure
    assert pc.model_key(model(), trains="dense") == key                  # what trains, by default: everything
    assert pc.model_key(model(width=5)) != key                           # a shape
    assert pc.model_key(model(frozen=True)) != key                       # what takes gradients
    assert pc.model_key(model(), trains="mask") != key                   # the update method
    assert pc.model_key(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))) != key   # a module's type


def test_busy_seconds_are_the_machines_less_idle_and_iowait_and_this_process_user_and_system(monkeypatch):
    import psutil
    Times = namedtuple("Times", "user nice system idle iowait irq")
    monkeypatch.setattr(psutil, "cpu_times", lambda: Times(10.0, 1.0, 4.0, 100.0, 7.0, 2.0))
    assert pc.machine_busy_s() == pytest.approx(17.0)
    MacTimes = namedtuple("MacTimes", "user nice system idle")        # no iowait on macOS
    monkeypatch.setattr(psutil, "cpu_times", lambda: MacTimes(10.0, 1.0, 4.0, 100.0))
    assert pc.machine_busy_s() == pytest.approx(15.0)
    Own = namedtuple("Own", "user system children_user children_system")
    monkeypatch.setattr(psutil.Process, "cpu_times", lambda self: Own(2.5, 0.5, 9.0, 9.0))
    assert pc.own_busy_s() == pytest.approx(3.0)


def test_a_block_too_short_to_measure_takes_the_starts_sample_and_load_is_never_negative(monkeypatch):
    monkeypatch.delenv("EDGE_SEL_OTHER_LOAD", raising=False)
    clock = iter([10.0, 10.2])                       # 0.2 s: below MIN_WALL_S
    monkeypatch.setattr(pc.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(pc, "machine_busy_s", lambda: 0.0)
    monkeypatch.setattr(pc, "own_busy_s", lambda: 0.0)
    monkeypatch.setattr(pc, "other_load", lambda: 1.25)
    with pc.OtherLoad() as short:
        assert short.cpus == 0.0                     # nothing measured before the block ends
    assert short.cpus == 1.25
    clock = iter([10.0, 10.25])                      # exactly MIN_WALL_S: measured
    busy = iter([50.0, 50.1])
    own = iter([5.0, 5.3])                           # this process used more than the machine saw
    monkeypatch.setattr(pc.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(pc, "machine_busy_s", lambda: next(busy))
    monkeypatch.setattr(pc, "own_busy_s", lambda: next(own))
    with pc.OtherLoad() as measured:
        pass
    assert measured.cpus == 0.0


def test_an_unreadable_or_malformed_cache_is_no_cache(cache):
    cache.mkdir()
    (cache / "layout.json").write_text("[1, 2]")
    assert pc._read("layout.json") == {}
    (cache / "layout.json").write_text("{not json")
    assert pc._read("layout.json") == {}
    assert pc._read("missing.json") == {}


def test_a_cache_that_cannot_be_written_warns_naming_it_and_the_run_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("EDGE_SEL_CACHE", str(blocker / "cache"))      # a directory under a file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pc._write("layout.json", {"k": {"a": 1}})
    assert [str(w.message).split(":")[0] for w in caught] == [f"could not keep the measurement in {blocker / 'cache' / 'layout.json'}"]


def test_entries_are_written_whole_in_a_directory_made_for_them(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path / "home" / ".cache" / "edge-sel"))     # none of it exists
    pc._write("precision.json", {"k": {"train": "bf16"}})
    written = tmp_path / "home" / ".cache" / "edge-sel" / "precision.json"
    assert json.loads(written.read_text()) == {"k": {"train": "bf16"}}


def test_a_provisional_entry_is_reused_only_under_load_a_final_one_always(cache):
    pc._write("layout.json", {"final": {"x": 1, "provisional": False}, "loaded": {"x": 2, "provisional": True},
                              "odd": "not an entry"})
    asked = []

    def load(cpus):
        return lambda: asked.append(cpus) or cpus
    assert pc.usable_entry("layout.json", "final", load(0.0)) == {"x": 1, "provisional": False} and asked == []
    assert pc.usable_entry("layout.json", "loaded", load(0.49)) is None         # a quiet start measures again
    assert pc.usable_entry("layout.json", "loaded", load(0.5)) == {"x": 2, "provisional": True}
    assert pc.usable_entry("layout.json", "odd", load(1.0)) is None
    assert pc.usable_entry("layout.json", "missing", load(1.0)) is None
    assert asked == [0.49, 0.5]                      # the load is sampled only for a provisional entry


def test_keep_marks_a_result_taken_under_load_provisional_and_a_final_one_wins(cache):
    kept = pc.keep("layout.json", "k", {"format": "channels_last"}, 0.496)
    assert kept == {"format": "channels_last", "other_load_cpus": 0.5, "provisional": False}
    assert json.loads((cache / "layout.json").read_text()) == {"k": kept}
    # Another process's final entry wins over this one's.
    assert pc.keep("layout.json", "k", {"format": "contiguous"}, 0.0) == kept
    loaded = pc.keep("layout.json", "other", {"format": "contiguous"}, 0.5)
    assert loaded["provisional"] is True and loaded["other_load_cpus"] == 0.5
    # A provisional entry is replaced by the next measurement.
    again = pc.keep("layout.json", "other", {"format": "channels_last"}, 0.0)
    assert again == {"format": "channels_last", "other_load_cpus": 0.0, "provisional": False}
    assert json.loads((cache / "layout.json").read_text()) == {"k": kept, "other": again}


def test_a_step_time_beyond_three_times_the_probe_either_way_drops_only_its_entry(cache):
    pc._write("precision.json", {"k": {"train": "bf16"}, "other": {"train": "fp32"}})
    assert pc.check_step_time("precision.json", "", 0.1, 0.2) is None
    assert pc.check_step_time("precision.json", "k", None, 0.2) is None
    assert pc.check_step_time("precision.json", "k", 0.1, None) is None
    # Exactly 3x either way (0.75 / 0.25 and 0.25 / 0.75 are exact in floats) is kept.
    assert pc.check_step_time("precision.json", "k", 0.25, 0.75) == {
        "probed_s_per_step": 0.25, "measured_s_per_step": 0.75, "ratio": 3.0, "action": "kept (within 3x)"}
    assert pc.check_step_time("precision.json", "k", 0.75, 0.25)["action"] == "kept (within 3x)"
    assert json.loads((cache / "precision.json").read_text())["k"] == {"train": "bf16"}
    slow = pc.check_step_time("precision.json", "k", 0.1, 0.30125)
    assert slow == {"probed_s_per_step": 0.1, "measured_s_per_step": 0.30125, "ratio": 3.013,
                    "action": "dropped: measured again at the next start (beyond 3x)"}
    assert json.loads((cache / "precision.json").read_text()) == {"other": {"train": "fp32"}}
    fast = pc.check_step_time("precision.json", "other", 0.4, 0.1)
    assert fast["action"].startswith("dropped") and fast["ratio"] == 0.25
    assert json.loads((cache / "precision.json").read_text()) == {}
    # A key already gone: reported, nothing written.
    assert pc.check_step_time("precision.json", "gone", 1.0, 10.0)["action"].startswith("dropped")


def test_a_runs_step_time_is_the_median_of_its_plain_epochs():
    records = [{"samples_per_s": 100.0}, {"samples_per_s": 400.0}, {"samples_per_s": 200.0},
               {"samples_per_s": 800.0, "flops_scoring": 1}, {"samples_per_s": 800.0, "flops_calibration": 1},
               {"samples_per_s": None}, {}]
    assert pc.run_step_s(records, 32) == pytest.approx(32 / 200.0)
    assert pc.run_step_s(records[:2], 32) == pytest.approx(32 / 400.0)      # an even count: the upper middle
    assert pc.run_step_s(records[3:], 32) is None


def test_each_probe_is_checked_against_the_arm_the_run_ran_with(cache):
    layout = SimpleNamespace(cache_key="L", memory_format="channels_last",
                             train_s_per_step={"channels_last": 0.001, "contiguous": 0.1})
    precision = SimpleNamespace(cache_key="P", train="fp32", train_s_per_step={"bf16": 0.1})
    records = [{"samples_per_s": 32 / 0.1}]
    pc._write("layout.json", {"L": {"format": "channels_last"}})
    pc._write("precision.json", {"L": {"train": "fp32"}})
    found = pc.check_choices(records, 32, layout, precision)
    assert list(found) == ["layout"] and found["layout"]["probed_s_per_step"] == 0.001
    assert found["layout"]["action"].startswith("dropped")
    # The layout's own file loses the entry; the precision file's entry of the same key stays.
    assert pc._read("layout.json") == {} and pc._read("precision.json") == {"L": {"train": "fp32"}}
    precision.train = "bf16"
    layout.cache_key = ""
    found = pc.check_choices(records, 32, layout, precision)
    assert list(found) == ["precision"] and found["precision"]["action"] == "kept (within 3x)"
    assert pc.check_choices([], 32, layout, precision) == {}
