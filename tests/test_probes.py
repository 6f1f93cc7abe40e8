"""The layout and precision probes on a shared CPU (edge_sel/engine/machine/probe_cache.py): kept per CPU
model and model structure, provisional when measured under load, measured again on a quiet start,
dropped when a run's steps disagree with them."""

import pytest
import torch
from torch import nn

from edge_sel.engine.machine import layout, precision, probe_cache
from edge_sel.models import build_model

X86_BF16 = "model name\t: {}\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16\n"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A CPU with bf16 instructions whose model the test names, and a cache of the test's own."""
    def named(model: str) -> None:
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc" / "cpuinfo").write_text(X86_BF16.format(model) * 2)
    named("Example CPU A")
    monkeypatch.setenv("EDGE_SEL_SYSFS_ROOT", str(tmp_path))
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    return named


def timings(calls: list, train: dict, rates: dict):
    def measure(*args):
        torch.rand(1)                      # a training-mode forward's dropout draws from torch's stream
        calls.append(dict(train))
        return dict(train), dict(rates), 7
    return measure


def choose(model):
    return precision.choose_precision(model, (3, 8, 8), 10, torch.device("cpu"), 32, torch.contiguous_format, 64)


def test_the_key_names_the_cpu_model_the_structure_and_what_trains(machine):
    a = probe_cache.machine_key(torch.device("cpu"))
    assert "Example CPU A" in a and f"torch {torch.__version__}" in a
    machine("Example CPU B")
    assert probe_cache.machine_key(torch.device("cpu")) != a
    # Two models of the same size and class: not the same key.
    wide = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 36, 10))
    assert sum(p.numel() for p in wide.parameters()) == sum(p.numel() for p in other.parameters())
    assert probe_cache.model_key(wide) != probe_cache.model_key(other)
    assert probe_cache.model_key(wide, "dense") != probe_cache.model_key(wide, "bn-affine")
    key = probe_cache.model_key(wide)
    wide[0].weight.requires_grad_(False)
    assert probe_cache.model_key(wide) != key


def test_a_probe_under_load_is_provisional_and_a_quiet_start_measures_again(machine, monkeypatch):
    model = build_model("edgecnn", 10, 3)
    calls: list = []
    # Under load bf16 looked 3x slower (the disturbed figure this machine once kept).
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "2")
    monkeypatch.setattr(precision, "measure", timings(calls, {"fp32": 1.0, "bf16": 3.0}, {"fp32": 1.0, "bf16": 1.0}))
    stream = torch.get_rng_state()
    loaded = choose(model)
    assert torch.equal(torch.get_rng_state(), stream)      # the run's dropout masks are not the probe's
    assert (loaded.train, loaded.source, loaded.provisional, loaded.other_load_cpus) == ("fp32", "measured", True, 2)
    assert "measured again on a quiet start" in loaded.reason
    again = choose(model)                          # still under load: the provisional figure serves
    assert (again.source, again.train, len(calls)) == ("measured earlier", "fp32", 1)
    # A quiet start measures again, finds bf16 faster, and keeps that as final.
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "0")
    monkeypatch.setattr(precision, "measure", timings(calls, {"fp32": 1.0, "bf16": 0.5}, {"fp32": 1.0, "bf16": 1.0}))
    quiet = choose(model)
    assert (quiet.source, quiet.train, quiet.provisional, len(calls)) == ("measured", "bf16", False, 2)
    # Final: a later start under load does not measure (and cannot undo it).
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "2")
    later = choose(model)
    assert (later.source, later.train, len(calls)) == ("measured earlier", "bf16", 2)


def test_the_layout_probe_follows_the_same_rules(machine, monkeypatch):
    model = build_model("edgecnn", 10, 3)
    calls: list = []

    def measure(model, input_shape, num_classes, device, batch_size, fmt, eval_batch_size, candidates, autocast):
        calls.append(fmt)
        torch.rand(1)                      # a training-mode forward's dropout draws from torch's stream
        slow_last = len(calls) == 1            # under load channels_last looked slower, and batch 128 best
        train = {"contiguous": 1.0, "channels_last": 2.0 if slow_last else 0.5}
        chosen = "contiguous" if slow_last else "channels_last"
        rates = {128: 9e4, 256: 1e3} if slow_last else {128: 1e3, 256: 2e3}
        return chosen, train, max(rates, key=rates.get), rates, 5
    monkeypatch.setattr(layout, "_measure", measure)
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "1.5")
    stream = torch.get_rng_state()
    first = layout.choose_layout(model, (3, 32, 32), 10, torch.device("cpu"), 32, max_eval_batch=300)
    assert torch.equal(torch.get_rng_state(), stream)      # the run's dropout masks are not the probe's
    assert (first.memory_format, first.eval_batch_size, first.provisional) == ("contiguous", 128, True)
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "0")
    second = layout.choose_layout(model, (3, 32, 32), 10, torch.device("cpu"), 32, max_eval_batch=300)
    assert (second.memory_format, second.eval_batch_size, second.provisional) == ("channels_last", 256, False)
    third = layout.choose_layout(model, (3, 32, 32), 10, torch.device("cpu"), 32, max_eval_batch=300)
    assert (third.source, third.memory_format, len(calls)) == ("measured earlier", "channels_last", 2)


def test_the_load_during_a_probe_is_other_work_not_the_probe(monkeypatch):
    monkeypatch.delenv("EDGE_SEL_OTHER_LOAD", raising=False)
    clock = iter([100.0, 102.0])                      # two seconds of probe
    machine = iter([500.0, 505.0])                    # the machine busy 5 CPU-seconds meanwhile,
    own = iter([10.0, 13.0])                          # 3 of them this process's own
    monkeypatch.setattr(probe_cache.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(probe_cache, "machine_busy_s", lambda: next(machine))
    monkeypatch.setattr(probe_cache, "own_busy_s", lambda: next(own))
    with probe_cache.OtherLoad() as load:
        pass
    assert load.cpus == pytest.approx(1.0)            # (5 - 3) / 2: other work, not the probe
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "0.5")  # a device that states its load is taken at its word
    with probe_cache.OtherLoad() as stated:
        pass
    assert stated.cpus == 0.5


def test_a_run_whose_steps_disagree_with_the_probe_measures_again(machine, monkeypatch):
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "0")
    calls: list = []
    monkeypatch.setattr(precision, "measure", timings(calls, {"fp32": 0.01, "bf16": 0.02}, {"fp32": 1.0, "bf16": 1.0}))
    model = build_model("edgecnn", 10, 3)
    choice = choose(model)
    layout_choice = layout.LayoutChoice("contiguous", 64, "given")
    records = [{"samples_per_s": 32 / 0.012}, {"samples_per_s": 32 / 0.011, "flops_scoring": 5}]
    kept = probe_cache.check_choices(records, 32, layout_choice, choice)
    assert kept["precision"]["action"].startswith("kept") and kept["precision"]["ratio"] == pytest.approx(1.2)
    assert "layout" not in kept                       # given, not measured: nothing to check
    assert choose(model).source == "measured earlier"
    slow = [{"samples_per_s": 32 / 0.05}]             # five times the probe's step
    dropped = probe_cache.check_choices(slow, 32, layout_choice, choice)
    assert dropped["precision"]["action"].startswith("dropped")
    assert choose(model).source == "measured" and len(calls) == 2
