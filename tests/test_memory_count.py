"""Counted training memory (core/memory.py), recomputed blocks (core/recompute.py) and lean saves
(core/lean_saves.py)."""

import copy

import pytest
import torch
from torch import nn

from edge_sel.core.kernel_workspace import convolution_workspace, uses_onednn
from edge_sel.core.lean_saves import _channels_last, is_lean, set_lean
from edge_sel.core.memory import MiB, MemoryCounter, StepShape
from edge_sel.core.recompute import recomputed, set_recomputed
from edge_sel.models import build_model
from edge_sel.models.blocks import named_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def counter(name="edgecnn", size=32):
    model = build_model(name, num_classes=10, input_shape=[3, size, size])
    return model, MemoryCounter(model, [3, size, size], sgd)


def test_a_full_step_keeps_what_autograd_saves_and_its_parts_add_up():
    model, c = counter()
    count = c.count(StepShape(64))
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert count.weights == weights
    assert count.optimizer == sum(p.numel() * 4 for p in model.parameters())      # one momentum buffer each
    assert count.batch == 64 * 3 * 32 * 32 * 4 + 64 * 8
    # Every activation the step keeps, counted by hand from the forward's own outputs: what autograd
    # saved, less the weights and the batch, is what a hook over a real CPU step sees.
    real = copy.deepcopy(model).train()
    seen = {}

    def keep(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        x, y = torch.zeros(64, 3, 32, 32), torch.zeros(64, dtype=torch.long)
        loss = nn.functional.cross_entropy(real(x), y)
    params = {t.untyped_storage().data_ptr() for t in [*real.parameters(), *real.buffers(), x, y]}
    assert count.saved == sum(n for k, n in seen.items() if k not in params)
    del loss
    parts = count.weights + count.optimizer + count.batch + count.activations + count.gradients + count.transient
    assert count.workspace == 0 and parts == count.peak          # no kernel rule asked for
    assert 40 * MiB < count.activations <= count.saved


def test_what_is_frozen_decides_not_how_many_parameters():
    model, c = counter()
    names = [n for n, _ in model.named_parameters()]
    head = {n for n in names if n.startswith(named_blocks(model)[-1][0])}
    full, classifier = c.count(StepShape(64)), c.count(StepShape(64), head)
    biases = c.count(StepShape(64), {n for n, p in model.named_parameters() if p.dim() == 1})
    assert classifier.activations == 0 and classifier.saved < 0.1 * MiB
    assert biases.saved > 0.95 * full.saved        # the input gradient flows through every layer
    assert classifier.peak < 0.5 * full.peak


def test_micro_batches_and_recomputed_blocks_keep_less():
    model, c = counter("mobilenetv2", 32)
    full = c.count(StepShape(32))
    micro = c.count(StepShape(32, micro_batch=8))
    blocks = tuple(name for name, _ in named_blocks(model)[:-1])
    again = c.count(StepShape(32, recompute=blocks))
    assert micro.activations < 0.3 * full.activations
    assert micro.gradients > 0            # the first micro-batch's gradients wait for the second
    assert again.peak < 0.5 * full.peak
    assert recomputed(c.twin()) == []     # counting leaves the twin as it was


def test_a_recomputed_block_gives_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = build_model("mobilenetv2", num_classes=10, input_shape=[3, 16, 16]).train()
    again = copy.deepcopy(plain)
    set_recomputed(again, [name for name, _ in named_blocks(again)[:-1]])
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for model in (plain, again):
        torch.manual_seed(1)          # the same dropout mask
        nn.functional.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), again.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, a), b in zip(plain.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name        # running statistics updated once, not twice
    set_recomputed(again, [])
    assert recomputed(again) == [] and "forward" not in again.stem.__dict__


def saved_bytes(model, x, y) -> int:
    """Bytes autograd saves over a real CPU step, less the weights and the batch."""
    seen = {}

    def keep(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(1)          # the same dropout mask
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    outside = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), x, y]}
    return sum(n for k, n in seen.items() if k not in outside)


@pytest.mark.parametrize("name,statistics,layout", [("mobilenetv2", "train", torch.contiguous_format),
                                                   ("efficientnet_lite0", "frozen", torch.channels_last)])
def test_lean_saves_keep_less_with_the_same_gradients_and_statistics_to_the_bit(name, statistics, layout):
    """Biases and norms trained: frozen convolutions keep no input and norm-activation pairs run again,
    and every gradient and running statistic equals the plain step's exactly; the meta count is
    what a hook over the real step sees."""
    torch.manual_seed(0)
    plain = build_model(name, num_classes=10, input_shape=[3, 32, 32]).to(memory_format=layout)
    plain.train(statistics == "train")
    for p in plain.parameters():
        p.requires_grad_(p.dim() == 1)
    lean, partly = copy.deepcopy(plain), copy.deepcopy(plain)
    set_lean(lean, True)
    first = tuple(name for name, _ in named_blocks(plain)[:-1])[:4]     # lean only in the earliest blocks
    set_lean(partly, first)
    x, y = torch.randn(8, 3, 32, 32).to(memory_format=layout), torch.randint(0, 10, (8,))
    kept = [saved_bytes(model, x, y) for model in (plain, lean, partly)]
    assert kept[1] < 0.6 * kept[0] and kept[1] < kept[2] < kept[0]
    for other in (lean, partly):
        for (n, p), q in zip(plain.named_parameters(), other.parameters()):
            assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), n
        for (n, a), b in zip(plain.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), n           # statistics updated once, as the plain step does
    c = MemoryCounter(plain.to(memory_format=torch.contiguous_format), [3, 32, 32], sgd)
    trains = {n for n, p in plain.named_parameters() if p.requires_grad}
    shapes = [StepShape(8, bn_statistics=statistics, lean=on) for on in (False, True, first)]
    if layout == torch.contiguous_format:      # the meta twin counts a contiguous step
        assert [c.count(s, trains).saved for s in shapes] == kept
    else:
        assert c.count(shapes[1], trains).saved < 0.6 * c.count(shapes[0], trains).saved
    set_lean(lean, False)
    assert not is_lean(lean) and not is_lean(c.twin())


def test_the_layout_rule_reads_strides_as_torch_does():
    """Which layout a frozen convolution's input has decides whether it may drop the input: the rule
    written out on integers agrees with torch's own on plain, channels-last, ambiguous (size-1),
    sliced, permuted and expanded tensors."""
    from torch._prims_common import suggest_memory_format
    seen = []
    for shape in [(1, 96, 48, 48), (2, 3, 4, 5), (4, 1, 1, 1), (1, 1, 5, 5), (3, 4, 1, 1), (1, 4, 1, 6),
                  (2, 0, 3, 3), (1, 1, 1, 1)]:
        t = torch.randn(*shape)
        last = t.contiguous(memory_format=torch.channels_last)
        for u in (t, last, last[..., 1:], t[..., ::2], t.permute(0, 2, 3, 1), t.transpose(1, 3),
                  t.new_empty(1).expand(shape), t[0]):
            seen.append(_channels_last(u))
            assert seen[-1] == (suggest_memory_format(u) == torch.channels_last), (u.shape, u.stride())
    assert any(seen) and not all(seen)


@pytest.mark.parametrize("batch,channels,kernel,stride,groups,threads", [
    (8, 16, 1, 1, 1, 1),        # 1 x 1, unstrided, few images, one thread: ATen's own GEMM
    (8, 16, 1, 1, 1, 2),        # the same on two threads: oneDNN
    (16, 16, 1, 1, 1, 1),       # sixteen images: oneDNN
    (8, 16, 1, 2, 1, 1),        # strided: oneDNN
    (8, 16, 3, 1, 16, 1),       # depthwise: oneDNN
    (1, 2, 3, 1, 1, 1),         # one tiny image: ATen's own
])
def test_the_rule_knows_which_kernel_aten_runs(batch, channels, kernel, stride, groups, threads):
    x, w = torch.randn(batch, channels, 12, 12), torch.randn(16, channels // groups, kernel, kernel)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            nn.functional.conv2d(x, w, stride=stride, padding=kernel // 2, groups=groups)
    finally:
        torch.set_num_threads(previous)
    ran = any(e.name == "aten::mkldnn_convolution" for e in prof.events())
    assert uses_onednn(x, w, (stride, stride), (1, 1), groups, threads) == ran


def test_a_cpu_count_adds_the_running_convolutions_blocked_copies():
    aten = torch.ops.aten
    x, w = torch.zeros(32, 3, 20, 20, device="meta"), torch.zeros(8, 3, 3, 3, device="meta")
    out = torch.zeros(32, 8, 10, 10, device="meta")
    args = (x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1)
    # forward: the larger of the input, its 3 channels padded to 16, and the output
    assert convolution_workspace(aten.convolution.default, args, out, 1) == 32 * 16 * 20 * 20 * 4
    grad = (out, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])
    # backward of a strided dense convolution with the input's gradient: two padded inputs
    assert convolution_workspace(aten.convolution_backward.default, grad, None, 1) == 2 * 32 * 16 * 20 * 20 * 4
    weight_only = grad[:-1] + ([False, True, False],)
    assert convolution_workspace(aten.convolution_backward.default, weight_only, None, 1) == \
        32 * 16 * 20 * 20 * 4 + out.numel() * 4
    assert convolution_workspace(aten.convolution.default, (x.to(memory_format=torch.channels_last), *args[1:]),
                                 out, 1) == 0
    assert convolution_workspace(aten.relu.default, (out,), out, 1) == 0
    model = build_model("mobilenetv2", num_classes=10, input_shape=[3, 32, 32])
    plain, cpu = MemoryCounter(model, [3, 32, 32], sgd), MemoryCounter(model, [3, 32, 32], sgd, kernels="cpu")
    for a, b in ((plain.count_forward(32), cpu.count_forward(32)), (plain.count(StepShape(16)), cpu.count(StepShape(16)))):
        assert a.workspace == 0 and b.workspace > 0 and b.peak > a.peak
        assert b.weights + b.optimizer + b.batch + b.activations + b.gradients + b.transient + b.workspace == b.peak


def test_reused_meta_outputs_count_what_running_every_kernel_counts():
    """The counter makes the outputs of a meta kernel it ran before on the same shapes again instead of
    running it (torch computes BatchNorm's and hardtanh's in Python: two thirds of a count's time);
    every count stays what running each kernel counts."""
    model, reusing = counter("mobilenetv2", 16)
    running = MemoryCounter(model, [3, 16, 16], sgd)
    running.outputs = None
    blocks = tuple(name for name, _ in named_blocks(model)[:-1])
    names = [n for n, _ in model.named_parameters()]
    shapes = [(StepShape(8), None), (StepShape(8, 4, blocks), set(names[20:])), (StepShape(8, 2), set(names[-4:]))]
    for shape, trainable in shapes:
        assert reusing.count(shape, trainable) == running.count(shape, trainable)
    assert reusing.count_forward(8, True) == running.count_forward(8, True)
    assert reusing.outputs.reused > 100
