"""A run's memory in its records and summary: counted as core/memory.py counts the steps the run
took, measured by engine/machine/peak_memory.py (the resident high-water mark on a CPU, torch's
allocated bytes on CUDA, here through an injected fake)."""

import mmap
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edge_sel.config import TrainConfig
from edge_sel.core.memory import MiB, StepShape
from edge_sel.data.dataset import IndexedDataset
from edge_sel.engine.loop.memory_records import RunMemory, count_fields
from edge_sel.engine.loop.step_memory import memory_counter
from edge_sel.engine.machine.peak_memory import PeakMeter
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.engine.runs.memory_summary import memory_block
from edge_sel.engine.runs.run import finetune
from edge_sel.models import load_checkpoint
from edge_sel.models.blocks import model_blocks
from edge_sel.report.summary import memory_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def layers_run(tiny_warm, tmp_path_factory):
    """An epoch of `--sparsity layers`: a dense probe step, then steps with frozen blocks."""
    out = tmp_path_factory.mktemp("memory") / "run"
    cfg = TrainConfig(epochs=1, batch_size=32, sparsity="layers", memory_format="contiguous")
    summary = finetune(tiny_warm, DataOptions("synthetic"), cfg, out, quiet=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, cfg, summary, records


def mib(n):
    return round(n / MiB, 3)


def test_an_epoch_whose_trainable_set_changes_carries_its_largest_step(layers_run):
    out, cfg, summary, records = layers_run
    model, card = load_checkpoint(out)
    counter, shape = memory_counter(cfg, model, card.input_shape, torch.device("cpu"))
    assert shape == StepShape(32)
    first = records[1]
    assert first["epoch"] == 0 and first["memory_step_sets"] == 2 and first["memory_step_samples"] == 32
    dense = counter.count(shape, {n for n, _ in model.named_parameters()})
    blocks = model_blocks(model)
    frozen_ids = {id(p) for i in first["frozen_blocks"] for p in blocks[i].parameters()}
    frozen = counter.count(shape, {n for n, p in model.named_parameters() if id(p) not in frozen_ids})
    # Issue [hardening], item 10: the counter against the model's own tensors, not against itself:
    # the weights and buffers, SGD's momentum of what trains, the batch's images and labels.
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)         # noqa: E731
    assert dense.weights == nbytes([*model.parameters(), *model.buffers()])
    assert dense.optimizer == nbytes(model.parameters())
    assert frozen.optimizer == nbytes(p for p in model.parameters() if id(p) not in frozen_ids) < dense.optimizer
    c, h, w = card.input_shape
    assert dense.batch == frozen.batch == 32 * c * h * w * 4 + 32 * 8
    assert frozen.peak < dense.peak
    assert {k: first[k] for k in count_fields(dense)} == count_fields(dense)
    assert first["memory_counted_mb"] == mib(dense.peak) and first["memory_activations_mb"] == mib(dense.activations)
    # Evaluation: one forward-only pass at the run's evaluation batch size (or the set, where smaller).
    images = max(first[f"{k}_samples_evaluated"] for k in ("val", "test", "anchor"))
    forward = counter.count_forward(min(json.loads((out / "config.json").read_text())["eval_batch_size"], images))
    assert first["memory_eval_counted_mb"] == mib(forward.peak)
    assert records[0]["phase"] == "baseline" and records[0]["memory_eval_counted_mb"] is not None
    splits = DataOptions("synthetic").load()
    held = sum(t.numel() * t.element_size() for ds in (splits.train, splits.val, splits.test)
               for t in (ds.images, ds.labels, ds.index))
    assert first["memory_data_mb"] == mib(held)


def test_the_measured_peak_on_this_cpu_and_the_summary_block(layers_run):
    out, _, summary, records = layers_run
    trained = records[1:]
    method = trained[0]["memory_measure_method"]
    assert method in ("rss-hwm", "rss-hwm-lifetime")
    # Issue [hardening], item 10: `>= 0` held for a measurement that never ran. The run is in this
    # process: what it measured above its level before training is positive and below its peak.
    import resource
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The pages the C allocator kept free from earlier work in this process (the warmup, other
    # tests) go back before the base is taken: reusing them, training measured 0.0-0.5 MiB of growth
    # against 4.8 MiB of counted activations alone.
    for r in trained:
        assert r["memory_activations_mb"] < r["memory_measured_mb"] < process_peak_mb
        assert r["memory_activations_mb"] < r["memory_eval_measured_mb"] < process_peak_mb
    memory = json.loads((out / "summary.json").read_text())["memory"]
    largest = max(trained, key=lambda r: r["memory_counted_mb"])
    assert memory["counted_mb"] == largest["memory_counted_mb"]
    assert memory["counted_parts_mb"]["activations"] == largest["memory_activations_mb"]
    assert memory["measured_mb"] == max(r["memory_measured_mb"] for r in trained)
    assert memory["eval_counted_mb"] == max(r["memory_eval_counted_mb"] for r in records)
    assert memory["measure_method"] == method and set(memory["includes"]) >= {"counted_mb", "measured_mb"}
    line = memory_line(memory)
    assert f"counted {memory['counted_mb']:,.1f} MiB" in line and f"({method})" in line


def test_a_resumed_epoch_keeps_the_trainable_sets_its_steps_had():
    from edge_sel.engine.evaluation.evaluate import EmbarrassmentMeter
    from edge_sel.engine.loop.progress import EpochProgress
    from edge_sel.methods import Plan
    progress = EpochProgress(0, Plan(torch.arange(4), None, {}), [], EmbarrassmentMeter(2, 1.5, "cpu"))
    progress.memory_steps = {"110": 32, "111": 33}
    again = EpochProgress.from_state(progress.to_state(), 1.5, "cpu")
    assert again.memory_steps == {"110": 32, "111": 33}


def test_resident_peaks_nest_and_say_their_method(tmp_path):
    meter = PeakMeter("cpu")
    assert meter.method == "rss-hwm"       # Linux with a writable clear_refs
    outer = meter.begin()
    inner = meter.begin()
    # 48 MiB of fresh anonymous pages, every one touched: what the allocator kept from earlier tests
    # in this process cannot stand in for them.
    block = mmap.mmap(-1, 48 * MiB)
    page = b"\x01" * MiB
    for _ in range(48):
        block.write(page)
    block.close()
    assert 44 < meter.end(inner) < 60
    assert 44 < meter.end(outer) < 60     # the inner window's reset did not lose the outer's peak
    assert meter.end(outer) is None       # closed
    unwritable = tmp_path / "no-such-dir" / "clear_refs"
    assert PeakMeter("cpu", clear_refs=str(unwritable)).method == "rss-hwm-lifetime"
    none = PeakMeter("cpu", status=str(tmp_path / "none"))
    assert none.method == "unavailable" and none.begin() is None and none.end(None) is None


def test_images_mapped_from_the_decoded_cache_are_resident_before_a_window_reads_them(tmp_path):
    """A 24 MiB image file mapped as the decoded-image cache maps it (copy-on-write, data/folder.py):
    read by a window, its pages measured as that window's growth (a CLI run's full test set: 30 MiB in
    every peak after the start's evaluation); faulted in with the level, a window that reads every
    image measures none of them."""
    path = tmp_path / "images"
    path.write_bytes(bytes(range(256)) * (24 * MiB // 256))

    def window_reading_all(faulted: bool) -> float:
        images = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(24 * MiB // 3072, 3, 32, 32)))
        if faulted:     # as a run's level before training is taken, its test set the mapped images
            test = IndexedDataset(images, torch.zeros(len(images), dtype=torch.long),
                                  torch.arange(len(images)), ["a"])
            RunMemory(SimpleNamespace(device=torch.device("cpu"), train_ds=None, val_ds=None, val_eval_ds=None,
                                      test_ds=test, clean_test_ds=None))
        meter = PeakMeter("cpu")
        window = meter.begin()
        assert int(images.max()) == 255        # an evaluation reads every image
        return meter.end(window)
    assert window_reading_all(False) > 20
    assert window_reading_all(True) < 2


class FakeCuda:
    """torch.cuda's peak-memory statistics for one device."""

    def __init__(self):
        self.allocated = self.peak = 0
        self.resets = []

    def memory_allocated(self, device):
        return self.allocated

    def max_memory_allocated(self, device):
        return self.peak

    def reset_peak_memory_stats(self, device):
        self.resets.append(device)
        self.peak = self.allocated

    def alloc(self, n):
        self.allocated += n
        self.peak = max(self.peak, self.allocated)


def test_on_cuda_the_peak_is_torchs_allocated_bytes_over_the_level_before_training(monkeypatch):
    cuda = FakeCuda()
    cuda.alloc(100 * MiB)                 # weights and data on the device
    meter = PeakMeter("cuda:0", cuda=cuda)
    assert meter.method == "cuda-allocated"
    base = meter.level()
    cuda.alloc(500 * MiB)                 # an earlier epoch's peak: not this window's
    cuda.alloc(-500 * MiB)
    window = meter.begin(base)
    assert cuda.resets == [torch.device("cuda:0")]
    cuda.alloc(30 * MiB)
    evaluation = meter.begin(base)
    cuda.alloc(70 * MiB)
    cuda.alloc(-90 * MiB)
    assert meter.end(evaluation) == 100
    cuda.alloc(20 * MiB)
    assert meter.end(window) == 100       # the evaluation inside it is its peak too
    assert meter.begin(base) is not None and meter.level() == base + 30 * MiB
    # What a budgeted plan fits beside: on a GPU, what the allocator kept over the level before
    # training (a cuBLAS workspace stays for the process after the first matrix product).
    from types import SimpleNamespace
    from edge_sel.engine.loop.first_use import GIVEN, grown_mb
    monkeypatch.delenv(GIVEN, raising=False)
    cuda.alloc(32 * MiB)
    assert grown_mb(SimpleNamespace(run_memory=SimpleNamespace(meter=meter, base=base))) == 62


def test_the_summary_block_and_line_of_a_run_that_only_evaluated():
    baseline = {"epoch": -1, "memory_eval_counted_mb": 3.5, "memory_eval_measured_mb": 20.0}
    block = memory_block([], baseline)
    assert block["counted_mb"] is None and block["eval_counted_mb"] == 3.5 and "bn_adapt_counted_mb" not in block
    assert memory_line(block) == "memory: an evaluation pass 3.5 MiB; not measured here"
    assert memory_block([], None) is None


def allocated_peak(fn) -> int:
    """The peak of live CPU tensor bytes while `fn` runs, from torch.profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_a_forward_only_pass_is_counted_as_torchs_allocator_sees_a_real_one():
    from edge_sel.core.memory import MemoryCounter
    from edge_sel.models import build_model
    model = build_model("edgecnn", num_classes=10, input_shape=[3, 32, 32]).eval()
    counter = MemoryCounter(model, [3, 32, 32], None)
    count = counter.count_forward(64)
    assert count.optimizer == count.activations == count.gradients == count.saved == 0
    assert count.batch == 64 * 3 * 32 * 32 * 4 and count.peak == count.weights + count.batch + count.transient
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        model(x)                                    # kernels and their tables loaded outside the count
        real = allocated_peak(lambda: model(x))
    assert real == pytest.approx(count.transient, rel=0.05)
    assert counter.count_forward(64) is count       # cached


def test_a_budgeted_runs_closing_line_puts_each_figure_against_the_budget_in_words():
    """The plan's 'counted peak 30.8 MB of 40 MB' read as a promise; the run then measured 81.3 MiB and
    said nothing. Now each figure is within the budget or over it by so much."""
    from edge_sel.report.summary import budget_line
    said = budget_line({"budget_mb": 40.0, "counted_mb": 30.8, "measured_mb": 81.3, "eval_measured_mb": 35.0,
                        "process_peak_mb": 412.0, "eval_counted_mb": 9.5, "eval_beside_mb": 20.25})
    assert "an evaluation pass counted 9.5 MiB beside the 20.2 MiB training keeps" in said
    assert said.startswith("memory budget 40 MiB")
    assert "counted 30.8 MiB, within it" in said
    assert "training 81.3 MiB, over it by 41.3 MiB (2.03x)" in said and "evaluating 35.0 MiB, within it" in said
    assert "peaked at 412.0 MiB resident, over it by 372.0 MiB" in said
    assert budget_line({"counted_mb": 30.8}) is None
