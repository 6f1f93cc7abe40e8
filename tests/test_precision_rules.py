"""The precision choice (edge_sel/engine/machine/precision.py) one function at a time, in seconds:
the autocast context, bf16's margin, the interleaved timing on a fake clock, what the probe runs
(train and evaluation passes on a copy, the FLOPs it counts), the accuracy check of evaluation in
bf16 on a model whose answers per precision the test sets, and choose_precision's figures: what
it caches, reuses and states in its reason. tests/test_precision.py and tests/test_probes.py run
them inside real runs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.data import IndexedDataset
from edge_sel.engine.machine import precision
from edge_sel.engine.machine import probe_cache

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "0")
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------
# autocast, faster, _sync


def linear_dtype() -> torch.dtype:
    return nn.Linear(2, 2)(torch.ones(1, 2)).dtype


def test_autocast_is_none_at_all_for_fp32_and_the_named_type_otherwise():
    with precision.autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert linear_dtype() == torch.float32
    for device in ("cpu", torch.device("cpu")):        # a name or a device
        with precision.autocast(device, "bf16"):
            assert torch.is_autocast_enabled("cpu")
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
            assert linear_dtype() == torch.bfloat16
        with precision.autocast(device, "fp16"):
            assert torch.get_autocast_dtype("cpu") == torch.float16
            assert linear_dtype() == torch.float16
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_is_faster_only_under_nine_tenths_of_fp32s_time():
    """A mutant comparing with <= (a tie at the margin) or dividing by the margin passed before."""
    assert precision.faster({"fp32": 2.0, "bf16": 1.8}) == "fp32"          # exactly 0.9: not clearly faster
    assert precision.faster({"fp32": 2.0, "bf16": 1.799}) == "bf16"
    assert precision.faster({"fp32": 2.0, "bf16": 2.0}) == "fp32"
    assert precision.faster({"fp32": 2.0, "bf16": 0.5}) == "bf16"
    assert precision.faster({"fp32": 0.5, "bf16": 2.0}) == "fp32"
    assert precision.faster({"fp32": 1e-3, "bf16": 8.9e-4}) == "bf16"


def test_only_a_cuda_device_is_synchronised(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    precision._sync(torch.device("cpu"))
    assert synced == []
    precision._sync(torch.device("cuda:1"))
    assert synced == [torch.device("cuda:1")]


# ---------------------------------------------------------------------------------------------
# _time_interleaved on a fake clock


def fake_clock(monkeypatch, durations: dict):
    """precision's clock advances only when run(p) runs, by the next of p's durations."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    order = []

    def run(p):
        order.append(p)
        clock.now += durations[p].pop(0)
    return run, order


def test_interleaved_timing_keeps_each_precisions_fastest_step_after_an_untimed_warm_up(monkeypatch):
    """Mutants timing the warm-up (its 1 ms is fastest), taking the maximum, adding the start time
    or running one step more or fewer passed before."""
    durations = {"fp32": [0.001, 0.5, 0.3, 0.4, 0.35, 0.45], "bf16": [0.002, 0.2, 0.25, 0.15, 0.3, 0.22]}
    run, order = fake_clock(monkeypatch, durations)
    times = precision._time_interleaved(run)
    assert order == ["fp32", "bf16"] * (precision.PROBE_STEPS + 1)          # taking turns, 5 + 1 each
    assert list(times) == ["fp32", "bf16"]
    assert times["fp32"] == pytest.approx(0.3, abs=1e-9) and times["bf16"] == pytest.approx(0.15, abs=1e-9)
    assert durations == {"fp32": [], "bf16": []}


def test_interleaved_timing_takes_the_precisions_and_steps_it_is_given(monkeypatch):
    durations = {"a": [0.0, 3.0, 2.0], "b": [0.0, 1.0, 4.0], "c": [9.0, 5.0, 6.0]}
    run, order = fake_clock(monkeypatch, durations)
    times = precision._time_interleaved(run, ("a", "b", "c"), steps=2)
    assert order == ["a", "b", "c"] * 3
    assert times == pytest.approx({"a": 2.0, "b": 1.0, "c": 5.0}, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# measure: what the probe runs, on a copy


SEEN: list = []         # what the probe's forward saw (a module-level list: a deep copy keeps it)


class Recorder(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        out = self.fc(self.bn(self.conv(x)).mean((2, 3)))
        if x.device.type != "meta":
            SEEN.append({"module": self, "n": len(x), "x": x.detach().clone(), "training": self.training,
                         "inference": torch.is_inference_mode_enabled(), "dtype": out.dtype,
                         "channels_last": x.is_contiguous(memory_format=torch.channels_last)
                         and not x.is_contiguous(),
                         "weight_channels_last": self.conv.weight.is_contiguous(memory_format=torch.channels_last)
                         and not self.conv.weight.is_contiguous()})
            if out.requires_grad:
                out.register_hook(lambda g: SEEN.append({"backward": len(g)}))
        return out


@pytest.fixture
def probe_runs(monkeypatch):
    """_time_interleaved replaced: each run once per precision, then the given timings (training
    steps first, evaluation batches second); the losses' inputs recorded."""
    SEEN.clear()
    given = [{"fp32": 0.2, "bf16": 0.1}, {"fp32": 0.5, "bf16": 0.25}]
    losses = []
    real_ce = nn.functional.cross_entropy

    def cross_entropy(logits, y, *a, **kw):
        if logits.device.type != "meta":
            losses.append((logits.dtype, y.clone()))
        return real_ce(logits, y, *a, **kw)
    monkeypatch.setattr(nn.functional, "cross_entropy", cross_entropy)

    calls = []

    def timed(run, precisions=("fp32", "bf16"), steps=precision.PROBE_STEPS):
        for p in precisions:
            run(p)
        calls.append(run)
        return dict(given[(len(calls) - 1) % 2])    # training steps, then evaluation
    monkeypatch.setattr(precision, "_time_interleaved", timed)
    return losses


def expected_inputs(batch: int, eval_batch: int, shape: tuple, classes: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(max(batch, eval_batch), *shape, generator=gen)
    return x, torch.randint(0, classes, (batch,), generator=gen)


def test_the_probe_trains_and_evaluates_a_copy_on_seeded_inputs_in_each_precision(probe_runs):
    """Mutants that seed otherwise, draw labels from 1 or from the run's own random stream, skip the
    backward pass or the fp32 cast of the logits, or run evaluation in training mode passed before."""
    model = Recorder().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    train, rates, flops = precision.measure(model, (3, 2, 2), 5, torch.device("cpu"), 4, torch.contiguous_format, 6)
    assert torch.equal(torch.get_rng_state(), rng)            # the run's random stream left alone
    x, y = expected_inputs(4, 6, (3, 2, 2), 5)
    steps = [s for s in SEEN if "module" in s]
    assert [(s["n"], s["training"], s["inference"], s["dtype"]) for s in steps] == [
        (4, True, False, torch.float32), (4, True, False, torch.bfloat16),
        (6, False, True, torch.float32), (6, False, True, torch.bfloat16)]
    assert [s.get("backward") for s in SEEN] == [None, 4, None, 4, None, None]     # a backward per step
    for s in steps:
        assert torch.equal(s["x"], x[:s["n"]])
    assert [dtype for dtype, _ in probe_runs] == [torch.float32, torch.float32]    # the loss from fp32 logits
    for _, labels in probe_runs:
        assert torch.equal(labels, y)
    probe = steps[0]["module"]
    assert probe is not model and all(s["module"] is probe for s in steps)
    assert all(p.grad is None for p in probe.parameters())                          # gradients set to none
    assert not model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not probe.bn.running_mean.eq(0).all()               # the copy's BatchNorm did train
    assert train == {"fp32": 0.2, "bf16": 0.1}
    assert rates == {"fp32": 6 / 0.5, "bf16": 6 / 0.25}
    counter = FlopCounter(Recorder(), (3, 2, 2))
    f, b = counter.train_step(4)
    assert flops == 12 * (f + b) + 12 * counter.eval_batch(6) and b > 0


def test_the_probe_trains_at_least_two_samples_and_evaluates_its_own_batch_size(probe_runs):
    """Mutants keeping one sample (BatchNorm cannot train on it) or three, or counting evaluation
    images as the larger of the batch sizes, passed before."""
    model = Recorder(classes=3).train()
    train, rates, flops = precision.measure(model, [3, 1, 1], 3, torch.device("cpu"), 1, torch.contiguous_format, 1)
    x, y = expected_inputs(2, 1, (3, 1, 1), 3)
    steps = [s for s in SEEN if "module" in s]
    assert [s["n"] for s in steps] == [2, 2, 1, 1]
    assert [s["training"] for s in steps] == [True, True, False, False] and model.training
    assert torch.equal(probe_runs[0][1], y) and torch.equal(steps[0]["x"], x)
    assert rates == {"fp32": 1 / 0.5, "bf16": 1 / 0.25}
    counter = FlopCounter(Recorder(classes=3), (3, 1, 1))
    f, b = counter.train_step(2)
    assert flops == 12 * (f + b) + 12 * counter.eval_batch(1)
    SEEN.clear()
    # A training batch larger than the evaluation batch: the inputs are the training batch's.
    _, rates, flops = precision.measure(model, (3, 2, 2), 3, torch.device("cpu"), 8, torch.contiguous_format, 3)
    steps = [s for s in SEEN if "module" in s]
    assert [s["n"] for s in steps] == [8, 8, 3, 3]
    assert rates == {"fp32": 3 / 0.5, "bf16": 3 / 0.25}
    counter = FlopCounter(Recorder(classes=3), (3, 2, 2))
    f, b = counter.train_step(8)
    assert flops == 12 * (f + b) + 12 * counter.eval_batch(3)


def test_the_probe_runs_in_the_runs_memory_layout(probe_runs):
    precision.measure(Recorder(), (3, 2, 2), 5, torch.device("cpu"), 2, torch.channels_last, 2)
    steps = [s for s in SEEN if "module" in s]
    assert len(steps) == 4 and all(s["channels_last"] and s["weight_channels_last"] for s in steps)
    SEEN.clear()
    precision.measure(Recorder(), (3, 2, 2), 5, torch.device("cpu"), 2, torch.contiguous_format, 2)
    assert not any(s["channels_last"] or s["weight_channels_last"] for s in SEEN if "module" in s)


def test_the_probe_its_inputs_and_labels_go_to_the_device_given(monkeypatch):
    """On the meta device (no arithmetic, every shape checked) a probe or batch left on the CPU
    fails: mutants moving the copy, the inputs or the labels nowhere passed before."""
    ran = []

    def fp32_only(run, precisions=("fp32", "bf16"), steps=precision.PROBE_STEPS):
        run("fp32")                                 # autocast has no meta device: fp32 passes only
        ran.append(run.__name__)
        return {"fp32": 0.5, "bf16": 0.25}
    monkeypatch.setattr(precision, "_time_interleaved", fp32_only)
    model = Recorder()
    train, rates, _ = precision.measure(model, (3, 2, 2), 5, torch.device("meta"), 4, torch.contiguous_format, 4)
    assert ran == ["train_step", "eval_batch"] and rates == {"fp32": 8.0, "bf16": 16.0}
    assert all(p.device.type == "cpu" for p in model.parameters())        # the model itself stays


def test_the_real_timing_runs_six_steps_per_precision_and_pass(monkeypatch):
    """measure with the real interleaved timing: each pass 12 times (5 timed + 1 warm-up, twice)."""
    SEEN.clear()
    train, rates, flops = precision.measure(Recorder(), (3, 1, 1), 5, torch.device("cpu"), 2,
                                            torch.contiguous_format, 3)
    steps = [s for s in SEEN if "module" in s]
    assert [s["n"] for s in steps] == [2] * 12 + [3] * 12
    assert [s["dtype"] for s in steps[:4]] == [torch.float32, torch.bfloat16] * 2
    assert set(train) == set(rates) == {"fp32", "bf16"} and all(v > 0 for v in [*train.values(), *rates.values()])


# ---------------------------------------------------------------------------------------------
# check_eval: accuracy per precision on a model whose answers the test sets


MEAN, STD = [0.25, 0.5], [0.5, 0.25]


class Table(nn.Module):
    """Reads each image's number from its pixels and answers the class its table gives for the
    precision the pass runs in (bf16 where autocast makes a Linear's output bf16)."""

    def __init__(self, fp32: list, bf16: list, classes: int = 3):
        super().__init__()
        self.answers = {torch.float32: torch.tensor(fp32), torch.bfloat16: torch.tensor(bf16)}
        self.classes = classes
        self.lin = nn.Linear(1, 1)
        self.calls = []

    def forward(self, x):
        dtype = self.lin(torch.zeros(1, 1)).dtype
        pixels = (x[:, :, 0, 0] * torch.tensor(STD) + torch.tensor(MEAN)) * 255
        number = pixels.round().long()
        i = number[:, 0] + 256 * number[:, 1]
        self.calls.append((dtype, len(x), self.training,
                           x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()))
        out = nn.functional.one_hot(self.answers[dtype][i], self.classes).float()
        return out.to(dtype)


def numbered(n: int, classes: int = 3) -> IndexedDataset:
    i = torch.arange(n)
    images = torch.stack([i % 256, i // 256], 1).to(torch.uint8)[:, :, None, None].expand(n, 2, 2, 2).contiguous()
    return IndexedDataset(images, i % classes, i, [str(c) for c in range(classes)])


def test_the_check_classifies_the_first_thousand_images_in_each_precision():
    """Mutants checking more than CHECK_IMAGES images, the same precision twice, another batch size,
    another layout, or agreement as something other than the share of equal answers passed before."""
    n = 1003
    labels = [i % 3 for i in range(n)]
    fp32 = [lab if i % 4 else (lab + 1) % 3 for i, lab in enumerate(labels)]       # 750 of 1000 right
    bf16 = [lab if i % 5 else (lab + 2) % 3 for i, lab in enumerate(labels)]       # 800 of 1000 right
    for i in range(1000, n):                                    # the images past 1000 all wrong
        fp32[i], bf16[i] = (labels[i] + 1) % 3, (labels[i] + 1) % 3
    model = Table(fp32, bf16).train()
    result = precision.check_eval(model, numbered(n), MEAN, STD, torch.device("cpu"), 300, torch.channels_last)
    assert result["images"] == 1000
    assert result["accuracy"]["fp32"] == pytest.approx(0.75, abs=1e-7)
    assert result["accuracy"]["bf16"] == pytest.approx(0.8, abs=1e-7)
    assert result["agreement"] == pytest.approx(0.6, abs=1e-7)      # both right: 1000 - 250 - 200 + 50
    assert list(result["accuracy"]) == ["fp32", "bf16"] and list(result) == ["images", "accuracy", "agreement"]
    assert [(d, k) for d, k, _, _ in model.calls] == [(torch.float32, 300)] * 3 + [(torch.float32, 100)] + \
        [(torch.bfloat16, 300)] * 3 + [(torch.bfloat16, 100)]
    assert not any(training for _, _, training, _ in model.calls) and model.training      # eval, then as it was
    assert all(cl for _, _, _, cl in model.calls)
    model = Table(fp32, bf16).eval()
    precision.check_eval(model, numbered(10), MEAN, STD, torch.device("cpu"), 4, torch.contiguous_format)
    assert not model.training and not any(cl for _, _, _, cl in model.calls)


def test_the_check_of_a_small_set_uses_all_of_it_and_agreement_counts_equal_answers():
    labels = [0, 1, 2, 0, 1]
    model = Table([0, 1, 2, 1, 1], [0, 1, 0, 0, 2])
    result = precision.check_eval(model, numbered(5), MEAN, STD, torch.device("cpu"), 2, torch.contiguous_format)
    assert result["images"] == 5
    assert result["accuracy"] == pytest.approx({"fp32": 0.8, "bf16": 0.6}, abs=1e-7)
    assert result["agreement"] == pytest.approx(0.4, abs=1e-7)      # images 0 and 1 only
    assert labels == numbered(5).labels.tolist()


def test_the_check_of_no_images_has_no_accuracy_and_no_agreement():
    model = Table([0], [0])
    result = precision.check_eval(model, numbered(0), MEAN, STD, torch.device("cpu"), 4, torch.contiguous_format)
    assert result == {"images": 0, "accuracy": {"fp32": None, "bf16": None}, "agreement": None}


# ---------------------------------------------------------------------------------------------
# accuracy_unchanged


def check(fp32, bf16, images=1000):
    return {"images": images, "accuracy": {"fp32": fp32, "bf16": bf16}}


def test_accuracy_is_unchanged_within_one_image_in_a_thousand_either_way():
    """A mutant comparing with < (the tolerance itself excluded) or subtracting the rounding
    allowance passed before: 0.612 - 0.611 is a little over 0.001 in floating point."""
    assert precision.accuracy_unchanged(check(0.612, 0.611))
    assert precision.accuracy_unchanged(check(0.611, 0.612))
    assert precision.accuracy_unchanged(check(0.0, 0.001 + 1e-12))        # exactly the bound
    assert precision.accuracy_unchanged(check(0.5, 0.5))
    assert not precision.accuracy_unchanged(check(0.0, 0.0010001))
    assert not precision.accuracy_unchanged(check(0.0010001, 0.0))
    assert not precision.accuracy_unchanged(check(0.612, 0.610))
    assert not precision.accuracy_unchanged(check(0.5, 0.6))


def test_without_images_or_an_fp32_accuracy_nothing_is_unchanged():
    """Mutants reading the check with `and`, or accepting a missing fp32 accuracy, passed before."""
    assert not precision.accuracy_unchanged({})
    assert not precision.accuracy_unchanged({"images": 5})
    assert not precision.accuracy_unchanged(check(0.5, 0.5, images=0))
    assert not precision.accuracy_unchanged(check(0.5, 0.5, images=None))
    assert not precision.accuracy_unchanged({"accuracy": {"fp32": 0.5, "bf16": 0.5}})
    assert not precision.accuracy_unchanged(check(None, 0.5))
    assert not precision.accuracy_unchanged({"images": 3, "accuracy": {"bf16": 0.5}})
    assert precision.accuracy_unchanged(check(0.5, 0.5, images=1))


# ---------------------------------------------------------------------------------------------
# choose_precision


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))


SHAPE = (3, 4, 4)


@pytest.fixture
def probe(cache, monkeypatch):
    """A CPU with bf16 instructions, measure() giving the test's timings, a clock moving 2.5 s
    between the choice's start and end; what each was asked is recorded."""
    state = SimpleNamespace(train={"fp32": 0.2, "bf16": 0.1}, rates={"fp32": 100.0, "bf16": 250.0},
                            measured=[], native=[], checked=[], check={}, cache=cache)

    def native(device):
        state.native.append(device)
        return True

    def measure(*args):
        state.measured.append(args)
        return dict(state.train), dict(state.rates), 123

    def check_eval(*args):
        state.checked.append(args)
        return state.check
    monkeypatch.setattr(precision, "native_bf16", native)
    monkeypatch.setattr(precision, "measure", measure)
    monkeypatch.setattr(precision, "check_eval", check_eval)
    ticks = iter(range(10_000))
    monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=lambda: 100.0 + 2.5 * next(ticks)))
    return state


def choose(model, device="cpu", shape=SHAPE, **kw):
    return precision.choose_precision(model, shape, 10, device, 8, torch.contiguous_format, 64, **kw)


def key_of(model, trains="dense", shape=SHAPE, batch=8, fmt=torch.contiguous_format, eval_batch=64):
    return "|".join(map(str, (probe_cache.machine_key(torch.device("cpu")), probe_cache.model_key(model, trains),
                              tuple(shape), batch, fmt, eval_batch)))


EMPTY = {"train_s_per_step": {}, "eval_images_per_s": {}, "eval_check": {}, "probe_wall_s": 0.0, "probe_flops": 0,
         "other_load_cpus": None, "provisional": False, "cache_key": ""}


def test_a_given_precision_is_used_as_given_without_measuring(probe):
    model = small()
    assert choose(model, precision="bf16").to_json() == {
        "train": "bf16", "eval": "bf16", "source": "given", "reason": "--precision bf16", **EMPTY}
    assert choose(model, precision="fp16", eval_precision="fp32").to_json() == {
        "train": "fp16", "eval": "fp32", "source": "given", "reason": "--precision fp16", **EMPTY}
    assert choose(model, precision="fp32", eval_precision="bf16").eval == "bf16"
    assert probe.measured == probe.native == [] and not probe.cache.exists()


def test_on_cuda_auto_is_bf16_where_native_else_fp16(probe, monkeypatch):
    model = small()
    assert choose(model, device="cuda:0").to_json() == {
        "train": "bf16", "eval": "bf16", "source": "cuda", "reason": "the GPU does bf16 natively", **EMPTY}
    assert probe.native == [torch.device("cuda:0")]
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert choose(model, device="cuda:0").to_json() == {
        "train": "fp16", "eval": "fp16", "source": "cuda",
        "reason": "no native bf16 on this GPU: fp16 with loss scaling", **EMPTY}
    assert probe.measured == []


def test_without_bf16_instructions_auto_is_fp32_without_measuring(probe, monkeypatch):
    """A mutant asking only `and` (an MPS device with a native answer would be measured) passed before."""
    model = small()
    choice = choose(model, device="mps")                 # not a CPU: never asked, never measured
    assert choice.to_json() == {
        "train": "fp32", "eval": "fp32", "source": "no native bf16",
        "reason": "mps: no bf16 instructions (avx512_bf16, amx_bf16 or Arm bf16), so bf16 would be emulated and slower",
        **EMPTY}
    assert probe.native == [] and probe.measured == []
    asked = []
    monkeypatch.setattr(precision, "native_bf16", lambda device: asked.append(device) or False)
    assert choose(model).reason == ("cpu: no bf16 instructions (avx512_bf16, amx_bf16 or Arm bf16), "
                                    "so bf16 would be emulated and slower")
    assert asked == [torch.device("cpu")] and probe.measured == [] and not probe.cache.exists()


def test_a_measured_choice_states_its_figures_keeps_them_and_reuses_them(probe):
    """Mutants that invert the ratio, drop the probe's wall time or FLOPs, or cache other figures
    passed before."""
    model = small()
    key = key_of(model)
    choice = choose(model, shape=list(SHAPE))           # a list: the key names its tuple
    assert probe.measured == [(model, list(SHAPE), 10, torch.device("cpu"), 8, torch.contiguous_format, 64)]
    assert probe.native == [torch.device("cpu")]
    assert choice.to_json() == {
        "train": "bf16", "eval": "fp32", "source": "measured",
        "reason": "training step bf16 2.00x fp32 (faster than 1/0.9); evaluation bf16 2.50x fp32; "
                  "evaluation kept fp32: no validation images to check its accuracy",
        "train_s_per_step": {"fp32": 0.2, "bf16": 0.1}, "eval_images_per_s": {"fp32": 100.0, "bf16": 250.0},
        "eval_check": {}, "probe_wall_s": 2.5, "probe_flops": 123, "other_load_cpus": 0.0, "provisional": False,
        "cache_key": key}
    assert json.loads((probe.cache / "precision.json").read_text()) == {key: {
        "train_s_per_step": {"fp32": 0.2, "bf16": 0.1}, "eval_images_per_s": {"fp32": 100.0, "bf16": 250.0},
        "other_load_cpus": 0.0, "provisional": False}}
    probe.train = {"fp32": 9.0, "bf16": 9.0}             # would be measured now: the kept figures win
    again = choose(model)
    assert len(probe.measured) == 1
    assert again.to_json() == {**choice.to_json(), "source": "measured earlier", "probe_flops": 0}


def test_the_key_names_what_trains_the_shape_batches_and_layout(probe):
    model = small()
    choice = choose(model, trains="mask")
    assert choice.cache_key == key_of(model, trains="mask") != key_of(model)
    assert choice.cache_key.split("|")[-4:] == ["(3, 4, 4)", "8", "torch.contiguous_format", "64"]
    assert choose(model).cache_key == key_of(model)
    assert len(probe.measured) == 2


def test_a_step_not_clearly_faster_in_bf16_stays_fp32_and_says_so(probe):
    probe.train = {"fp32": 1.0, "bf16": 0.95}
    probe.rates = {"fp32": 100.0, "bf16": 100.0}
    choice = choose(small(), check_ds=numbered(3), mean=MEAN, std=STD)
    assert (choice.train, choice.eval) == ("fp32", "fp32")
    assert choice.reason == "training step bf16 1.05x fp32 (not faster than 1/0.9); evaluation bf16 1.00x fp32"
    assert probe.checked == [] and choice.eval_check == {} and choice.probe_flops == 123


def test_a_slower_bf16_evaluation_is_fp32_whatever_its_accuracy(probe):
    probe.train = {"fp32": 0.1, "bf16": 0.3}
    probe.rates = {"fp32": 100.0, "bf16": 110.0}                  # 1.1x: not under 0.9 of the time
    probe.check = {"images": 3, "accuracy": {"fp32": 0.5, "bf16": 0.5}, "agreement": 1.0}
    choice = choose(small(), check_ds=numbered(3), mean=MEAN, std=STD)
    assert (choice.train, choice.eval) == ("fp32", "fp32") and probe.checked == []
    assert choice.reason == "training step bf16 0.33x fp32 (not faster than 1/0.9); evaluation bf16 1.10x fp32"


def eval_flops(model, images, batch=64):
    counter = FlopCounter(model, SHAPE)
    return sum(counter.eval_batch(min(batch, images - lo)) for lo in range(0, images, batch))


def test_a_faster_bf16_evaluation_is_used_where_the_check_finds_accuracy_unchanged(probe):
    """Mutants counting the check's FLOPs once, from the wrong batch boundaries, or replacing the
    probe's FLOPs with them passed before."""
    model = small()
    ds = numbered(100)
    probe.check = {"images": 100, "accuracy": {"fp32": 0.5, "bf16": 0.501}, "agreement": 0.97}
    choice = choose(model, check_ds=ds, mean=MEAN, std=STD)
    assert probe.checked == [(model, ds, MEAN, STD, torch.device("cpu"), 64, torch.contiguous_format)]
    assert (choice.train, choice.eval, choice.eval_check) == ("bf16", "bf16", probe.check)
    assert choice.reason == "training step bf16 2.00x fp32 (faster than 1/0.9); evaluation bf16 2.50x fp32"
    batches = FlopCounter(model, SHAPE).eval_batch(64) + FlopCounter(model, SHAPE).eval_batch(36)
    assert choice.probe_flops == 123 + 2 * batches == 123 + 2 * eval_flops(model, 100)
    assert FlopCounter(model, SHAPE).eval_batch(1) > 0
    # Kept: the next start checks accuracy again (the cache holds timings, not the check) but
    # counts only the check's FLOPs.
    again = choose(model, check_ds=ds, mean=MEAN, std=STD)
    assert len(probe.measured) == 1 and len(probe.checked) == 2
    assert (again.source, again.eval, again.probe_flops) == ("measured earlier", "bf16", 2 * batches)


def test_a_changed_accuracy_keeps_evaluation_fp32_and_states_both_accuracies(probe):
    model = small()
    probe.check = {"images": 40, "accuracy": {"fp32": 0.5, "bf16": 0.47512}, "agreement": 0.9}
    choice = choose(model, check_ds=numbered(40), mean=MEAN, std=STD)
    assert (choice.train, choice.eval, choice.eval_check) == ("bf16", "fp32", probe.check)
    assert choice.reason == ("training step bf16 2.00x fp32 (faster than 1/0.9); evaluation bf16 2.50x fp32; "
                             "evaluation kept fp32: accuracy on 40 validation images 0.5000 in fp32, 0.4751 in bf16")
    assert choice.probe_flops == 123 + 2 * eval_flops(model, 40)


def test_no_images_to_check_means_no_check_and_fp32_evaluation(probe):
    """A mutant checking an empty validation set passed before."""
    model = small()
    for ds in (None, numbered(0)):
        choice = choose(model, check_ds=ds, mean=MEAN, std=STD)
        assert (choice.eval, choice.eval_check) == ("fp32", {})
        assert choice.reason.endswith("; evaluation kept fp32: no validation images to check its accuracy")
    assert probe.checked == []


def test_a_measurement_under_load_is_provisional_reused_under_load_and_redone_on_a_quiet_start(probe, monkeypatch):
    """Mutants that drop the asked load (the start's sample decides instead) or misstate the load
    in the reason passed before."""
    model = small()
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "1.234")
    choice = choose(model)
    suffix = "; measured with 1.23 CPUs of other work: measured again on a quiet start"
    assert (choice.other_load_cpus, choice.provisional, choice.source) == (1.23, True, "measured")
    assert choice.reason.endswith("no validation images to check its accuracy" + suffix)
    monkeypatch.setenv("EDGE_SEL_OTHER_LOAD", "0")                # the start's sample: quiet
    asked = []
    busy = choose(model, load_now=lambda: asked.append(2.0) or 2.0)
    assert asked == [2.0] and len(probe.measured) == 1
    assert (busy.source, busy.provisional, busy.other_load_cpus, busy.probe_flops) == ("measured earlier", True,
                                                                                        1.23, 0)
    assert busy.reason == choice.reason
    probe.train = {"fp32": 0.3, "bf16": 0.1}
    quiet = choose(model, load_now=lambda: 0.2)
    assert len(probe.measured) == 2
    assert (quiet.source, quiet.provisional, quiet.other_load_cpus) == ("measured", False, 0.0)
    assert quiet.reason == ("training step bf16 3.00x fp32 (faster than 1/0.9); evaluation bf16 2.50x fp32; "
                            "evaluation kept fp32: no validation images to check its accuracy")
    kept = json.loads((probe.cache / "precision.json").read_text())[key_of(model)]
    assert kept == {"train_s_per_step": {"fp32": 0.3, "bf16": 0.1}, "eval_images_per_s": {"fp32": 100.0, "bf16": 250.0},
                    "other_load_cpus": 0.0, "provisional": False}
