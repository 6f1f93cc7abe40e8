"""Counts kept on the device between runs are read back only for the step they were made for."""

import copy
import json
import os
import re
from functools import partial

import pytest
import torch

from edge_sel.backends.torch_backend import make_optimizer
from edge_sel.config import TrainConfig
from edge_sel.core.memory import MemoryCounter, StepShape
from edge_sel.engine.loop.counted_step import run_step_factory
from edge_sel.engine.machine.count_store import CountStore
from edge_sel.methods.update.fixed_sets import classifier_names
from edge_sel.models import build_model

SHAPE = StepShape(8, 4, (), "frozen")


def counter(tmp_path, model, size=16, optimizer="sgd", cfg=None):
    factory = partial(make_optimizer, optimizer, lr=0.01, momentum=0.9, weight_decay=0.0)
    return MemoryCounter(model, [3, size, size], factory, kernels="cpu",
                         step=run_step_factory(cfg or TrainConfig(), model), store=CountStore(tmp_path / "counts.json"))


def test_a_count_is_read_back_only_where_nothing_it_depends_on_changed(tmp_path):
    model = build_model("edgecnn", num_classes=10, input_shape=[3, 16, 16])
    everything = {n for n, _ in model.named_parameters()}
    first = counter(tmp_path, model)
    made = [first.count(SHAPE, everything), first.count(SHAPE, classifier_names(model))]
    again = counter(tmp_path, model)
    assert [again.count(SHAPE, everything), again.count(SHAPE, classifier_names(model))] == made
    assert (first.counts_made, again.counts_made, again.counts_read) == (2, 0, 2)
    # Each of these changes the step's bytes: counted, never read.
    adam = counter(tmp_path, model, optimizer="adam")
    assert adam.count(SHAPE, everything).optimizer > 1.9 * made[0].optimizer and adam.counts_read == 0
    larger = counter(tmp_path, model, size=24)
    assert larger.count(SHAPE, everything).peak > made[0].peak and larger.counts_read == 0
    fedprox = counter(tmp_path, model, cfg=TrainConfig(proximal_mu=0.01))
    assert fedprox.count(SHAPE, everything).kept > made[0].kept and fedprox.counts_read == 0
    other = build_model("edgecnn", num_classes=7, input_shape=[3, 16, 16])
    assert counter(tmp_path, other).count(SHAPE, everything).weights < made[0].weights
    whole = counter(tmp_path, model)
    assert whole.count(StepShape(8, 0, (), "frozen"), everything).activations > made[0].activations
    assert whole.counts_read == 0
    # The layout decides the convolutions' own buffers (core/kernel_workspace.py): a channels-last
    # model's count is its own (it read a contiguous one's back, with their blocked copies in it).
    last = counter(tmp_path, copy.deepcopy(model).to(memory_format=torch.channels_last))
    assert last.count(SHAPE, everything).workspace < made[0].workspace and last.counts_read == 0
    # A factory whose settings cannot be read keeps nothing; a damaged file is counted again.
    size = (tmp_path / "counts.json").stat().st_size
    plain = MemoryCounter(model, [3, 16, 16], lambda ps: make_optimizer("sgd", ps, 0.5, 0.0, 0.0), kernels="cpu",
                          step=run_step_factory(TrainConfig(), model), store=CountStore(tmp_path / "counts.json"))
    plain.count(SHAPE, {"fc.weight"} & everything or classifier_names(model))
    assert (tmp_path / "counts.json").stat().st_size == size and plain.counts_read == 0
    (tmp_path / "counts.json").write_text("{not json")
    damaged = counter(tmp_path, model)
    assert damaged.count(SHAPE, everything) == made[0] and (damaged.counts_made, damaged.counts_read) == (1, 0)


def test_a_model_whose_code_cannot_be_read_is_always_counted(tmp_path, monkeypatch):
    """A class defined in a module without a source file (the Python API run from a string, as the
    model guide's example is): its counts are made and never kept (before: a TypeError from inspect)."""
    import sys
    import types

    module = types.ModuleType("made_from_a_string")
    exec("import torch\nclass Tiny(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
         "        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),\n"
         "                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))\n"
         "    def forward(self, x):\n        return self.body(x)\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    model = module.Tiny()
    first, again = counter(tmp_path, model), counter(tmp_path, model)
    assert first.count(SHAPE).peak == again.count(SHAPE).peak > 0
    assert (first.counts_made, again.counts_made, again.counts_read) == (1, 1, 0)
    assert not (tmp_path / "counts.json").exists()


def test_models_that_differ_only_in_a_modules_settings_never_read_each_others_counts(tmp_path):
    """Stride, dilation, padding and pooling change a step's bytes but no tensor's shape: a model with
    stride 4 counted first lent its count to the same model with stride 1 (10.5 MiB read for 49.5). Each
    now reads only its own, and the step-cost cache's model key tells them apart too."""
    from torch import nn

    from edge_sel.engine.machine.probe_cache import model_key

    def model(stride=1, dilation=1, padding=1, pool=2):
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=stride, padding=padding, dilation=dilation), nn.BatchNorm2d(8),
                             nn.ReLU(), nn.MaxPool2d(pool), nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 10))
    variants = [model(), model(stride=4), model(dilation=2, padding=2), model(padding=0), model(pool=4)]
    for i, m in enumerate(variants):
        kept = counter(tmp_path, m, size=32).count(SHAPE)
        fresh = MemoryCounter(m, [3, 32, 32], partial(make_optimizer, "sgd", lr=0.01, momentum=0.9, weight_decay=0.0),
                              kernels="cpu", step=run_step_factory(TrainConfig(), m)).count(SHAPE)
        assert kept == fresh, i
    peaks = [counter(tmp_path, m, size=32).count(SHAPE).peak for m in variants]
    assert len(set(peaks)) >= 4         # what reading another's count would have got wrong
    assert len({model_key(m) for m in variants}) == len(variants)


def test_the_caches_files_are_read_safely_and_only_sound_entries_are_used(tmp_path):
    """A FIFO named counts.json hung a run; a link was followed; a file of any size was read; a bool
    or a negative number passed as a count, and as a step's seconds. Now each is a cache with nothing
    in it (the step is counted or timed again), at once."""
    import json
    import os
    import threading

    from edge_sel.engine.machine import probe_cache
    from edge_sel.engine.machine.joule_plan import CACHE_FILE, Candidate, measure_costs
    fifo = tmp_path / "fifo" / "counts.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    found = []
    reader = threading.Thread(target=lambda: found.append(probe_cache.read_entries(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    assert found == [{}]
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"k": {"peak": 1}}))
    (tmp_path / "link.json").symlink_to(real)
    assert probe_cache.read_entries(real) == {"k": {"peak": 1}} and probe_cache.read_entries(tmp_path / "link.json") == {}
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"k": {"peak": 1}, "pad": "x" * probe_cache.MAX_FILE_BYTES}))
    assert probe_cache.read_entries(big) == {}
    store = CountStore(tmp_path / "counts.json")
    store.put("ok", {"peak": 5, "weights": 0})
    for bad in ({"peak": True}, {"peak": -1}, {"peak": 1.5}):
        store.put("bad", bad)
        store.forget()
        assert store.get("bad") is None and store.get("ok") == {"peak": 5, "weights": 0}
    # A step's seconds that is no positive number is timed again.
    model = torch.nn.Linear(3, 2)
    c = Candidate("head", {"weight", "bias"})
    c.shape, c.count = StepShape(4), object()
    losses = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    first = measure_costs([c], model, x, y, losses, "cpu", 10)
    entries = probe_cache._read(CACHE_FILE)
    for key in entries:
        entries[key]["step_s"] = True
    probe_cache._write(CACHE_FILE, entries)
    again = measure_costs([c], model, x, y, losses, "cpu", 10)
    assert first["timed"] == again["timed"] == 1 and probe_cache.positive(c.step_s)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cache_file_another_user_could_write_is_set_aside_and_measured_again(tmp_path, monkeypatch):
    """A step-costs.json owned by another user, in a cache folder others may write, made a run choose full
    fine-tuning at "0 J estimated". Now a cache file that is another user's, or that group or others may
    write, is set aside with one line naming it, never read: the step is timed (or counted) again, and
    what was measured is kept in a file of this user's alone, whatever the umask."""
    from edge_sel.engine.machine import probe_cache
    from edge_sel.engine.machine.joule_plan import CACHE_FILE, Candidate, measure_costs
    monkeypatch.setenv("EDGE_SEL_CACHE", str(tmp_path))
    tmp_path.chmod(0o777)                   # a cache folder others may write
    model = torch.nn.Linear(3, 2)
    c = Candidate("head", {"weight", "bias"})
    c.shape, c.count = StepShape(4), object()
    losses = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    old_umask = os.umask(0o002)             # a group-writable umask: the kept file is still this user's alone
    try:
        assert measure_costs([c], model, x, y, losses, "cpu", 10)["timed"] == 1
    finally:
        os.umask(old_umask)
    costs, counts = tmp_path / CACHE_FILE, tmp_path / "counts.json"
    assert costs.stat().st_mode & 0o777 == 0o644 and costs.stat().st_uid == os.geteuid()
    entries = json.loads(costs.read_text())
    planted = {key: {**entry, "step_s": 1e-9} for key, entry in entries.items()}
    CountStore(counts).put("k", {"peak": 1})
    for change, why in ((lambda p: os.chown(p, 65534, 65534), "owned by user 65534, not by this user"),
                        (lambda p: os.chmod(p, 0o666), "writable by group or others (mode 666)")):
        costs.write_text(json.dumps(planted))
        costs.chmod(0o644)
        change(costs)
        change(counts)
        with pytest.warns(UserWarning, match=f"{costs}: {re.escape(why)}.*: set aside, not read"):
            again = measure_costs([c], model, x, y, losses, "cpu", 10)
        assert again["timed"] == 1 and c.step_s != 1e-9
        with pytest.warns(UserWarning, match=f"{counts}: {re.escape(why)}.*: set aside, not read"):
            assert CountStore(counts).get("k") is None
        assert costs.stat().st_uid == os.geteuid() and costs.stat().st_mode & 0o022 == 0      # replaced by ours
        os.chown(counts, os.geteuid(), -1)
        counts.chmod(0o644)
    # A link where a cache file was is replaced, never written through.
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    costs.unlink()
    costs.symlink_to(target)
    with pytest.warns(UserWarning, match="a link, not a file"):
        measure_costs([c], model, x, y, losses, "cpu", 10)
    assert target.read_text() == "{}" and not costs.is_symlink()
