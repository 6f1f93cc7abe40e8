import pytest
import torch
from torch import nn

from edge_sel.core.flops import FlopCounter
from edge_sel.errors import InputError
from edge_sel.models import build_model, count_parameters, model_table


def test_registry_reports_parameter_counts():
    counts = dict(model_table())
    assert 11_100_000 <= counts["resnet18_cifar"] <= 11_250_000      # the SEL reference model
    assert 200_000 <= counts["edgecnn"] <= 600_000


@pytest.mark.parametrize("name,shape", [("edgecnn", (2, 1, 8, 8)), ("edgecnn", (2, 3, 32, 32)),
                                        ("resnet18_cifar", (2, 3, 32, 32))])
def test_models_produce_logits(name, shape):
    model = build_model(name, num_classes=7, in_channels=shape[1]).eval()
    assert model(torch.zeros(shape)).shape == (2, 7)
    assert len(model.blocks()) >= 5


def test_resnet_stem_keeps_resolution():
    model = build_model("resnet18_cifar", 10)
    conv = model.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_unknown_model():
    with pytest.raises(InputError, match="--model: unknown model 'vgg'"):
        build_model("vgg", 10)


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5, bias=False)
        self.b = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.b(self.a(x.flatten(1)))


def test_flop_counts_are_exact_for_linear_layers():
    model = TwoLinear()
    counter = FlopCounter(model, [6])
    fwd, bwd = counter.train_step(4)
    assert fwd == 2 * 4 * (6 * 5 + 5 * 3)
    # Backward: weight grads of both layers, plus the input grad of b (a's input needs none).
    assert bwd == 2 * 4 * (6 * 5 + 5 * 3) + 2 * 4 * 5 * 3
    assert counter.train_step(8) == (2 * fwd, 2 * bwd)          # linear in batch size
    assert counter.eval_batch(4) == fwd


def test_freezing_a_prefix_removes_its_backward_flops():
    model = TwoLinear()
    counter = FlopCounter(model, [6])
    _, dense_bwd = counter.train_step(4)
    model.a.weight.requires_grad_(False)
    _, frozen_bwd = counter.train_step(4)
    assert frozen_bwd == 2 * 4 * 5 * 3                          # only b's weight grad is left
    assert dense_bwd - frozen_bwd == 2 * 4 * 6 * 5 + 2 * 4 * 5 * 3   # a's weight grad and b's input grad
    model.b.weight.requires_grad_(False)
    assert counter.train_step(4)[1] == 0


def test_counting_leaves_the_live_model_untouched(monkeypatch):
    model = build_model("edgecnn", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # The meta twins copy no weight on the host: `deepcopy(model).to("meta")` copied Lite0's 13 MiB each
    # time, and a FLOP count for a new row count inside a budgeted epoch put that copy into its peak.
    copied = []
    for cls in (torch.Tensor, nn.Parameter):
        monkeypatch.setattr(cls, "__deepcopy__", lambda self, memo, real=cls.__deepcopy__:
                            copied.append(tuple(self.shape)) or real(self, memo))
    from edge_sel.core.memory import MemoryCounter
    twin = MemoryCounter(model, [3, 32, 32], None).twin()
    assert all(t.is_meta for t in [*twin.parameters(), *twin.buffers()])
    assert [p.shape for p in twin.parameters()] == [p.shape for p in model.parameters()]
    FlopCounter(model, [3, 32, 32]).train_step(16)
    assert copied == []
    monkeypatch.undo()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert count_parameters(model) == count_parameters(model, trainable_only=True)
