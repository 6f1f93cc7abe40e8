"""The engine side of the condition bank (edge_sel/engine/evaluation/bn_bank.py) one function at a
time, in seconds: the fingerprint and its distance against numbers worked out here another way,
the FLOPs of a fingerprint and of a choice, which night's images a condition keeps, which
condition is matched, made or dropped, each condition's statistics re-estimated against plain
batch averages, and the samples and FLOPs counted. Tiny models with a BatchNorm layer or two and
tiny uint8 images; tests/test_bn_bank.py runs the bank inside real fine-tunes."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edge_sel.config import TrainConfig
from edge_sel.core.bn_bank import BANK_FILE, SavedCondition, read_bank, write_bank
from edge_sel.data import IndexedDataset
from edge_sel.engine.evaluation import bn_bank as bb
from edge_sel.engine.evaluation.bn_bank import (EPS, SOURCE, Condition, ConditionBank, attach_saved_bank, build_bank,
                                                check_bank_model, distance, distances, fingerprint,
                                                fingerprint_flops, images_fingerprint, load_buffers, make_bank,
                                                named_batchnorm, run_bank_for, save_buffers, source_statistics,
                                                weights_key, write_bank_for)
from edge_sel.errors import InputError
from edge_sel.predict.conditions import ConditionChooser

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = [1, 6, 6]
MEAN, STD = (0.5,), (0.25,)
# One image's fingerprint on 1 x 6 x 6: 16 Laplacian outputs, 5 FLOPs each (the 5-point stencil's
# 4 adds and 1 multiply), and 3 FLOPs per pixel (36) and per Laplacian output (16).
PRINT_FLOPS = 5 * 16 + 3 * (36 + 16)          # 236
# Its features (to choose per image): the same and 20 per channel on the sums.
FEATURE_FLOPS = PRINT_FLOPS + 20               # 256


class Net(nn.Module):
    """BatchNorm on the input itself (its statistics are the images'), a 1 x 1 convolution, a
    second BatchNorm of 2 channels."""

    def __init__(self, seed: int = 0, track: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bn_in = nn.BatchNorm2d(1, track_running_stats=track)
        self.conv = nn.Conv2d(1, 2, 1)
        self.bn_out = nn.BatchNorm2d(2, track_running_stats=track)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(2, 1, 1, 1, generator=g) + 1.0)
            self.conv.bias.copy_(torch.randn(2, generator=g))

    def forward(self, x):
        return self.bn_out(self.conv(self.bn_in(x)))


class Flops:
    """A FLOP counter whose eval batch costs 1000 per image plus the batch's size squared, so both
    the number of batches and their sizes show in the total; records the sizes asked."""

    def __init__(self):
        self.sizes = []

    def eval_batch(self, batch_size: int) -> int:
        self.sizes.append(batch_size)
        return 1000 * batch_size + batch_size * batch_size


def images(n: int, level: float, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (level + spread * torch.randn(n, *SHAPE, generator=g)).round().clamp(0, 255).to(torch.uint8)


def dataset(x: torch.Tensor, name="set") -> IndexedDataset:
    n = len(x)
    return IndexedDataset(x, torch.zeros(n, dtype=torch.long), torch.arange(n), ["a"], name=name)


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x.to(torch.float64) / 255 - MEAN[0]) / STD[0]


def reference_print(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: mean and population variance of the pixels, then of the valid 3 x 3 Laplacian's
    outputs, written out as explicit neighbour sums."""
    x = x.to(torch.float64)
    lap = x[:, :, :-2, 1:-1] + x[:, :, 2:, 1:-1] + x[:, :, 1:-1, :-2] + x[:, :, 1:-1, 2:] - 4 * x[:, :, 1:-1, 1:-1]
    c = x.shape[1]
    px, ed = x.transpose(0, 1).reshape(c, -1), lap.transpose(0, 1).reshape(c, -1)
    mean = torch.cat([px.mean(1), ed.mean(1)])
    var = torch.cat([((px - px.mean(1, keepdim=True)) ** 2).mean(1), ((ed - ed.mean(1, keepdim=True)) ** 2).mean(1)])
    return mean, var


def layer_stats(model: nn.Module, shift: float = 0.0) -> dict:
    return {n: (torch.arange(m.num_features, dtype=torch.float32) + shift,
                torch.full((m.num_features,), 1.0 + shift)) for n, m in named_batchnorm(model)}


# -- fingerprint, distance, FLOPs ---------------------------------------------------------------------

def test_named_batchnorm_lists_every_batchnorm_layer_by_name_in_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(8),
                          nn.LayerNorm(8))
    got = named_batchnorm(model)
    assert [n for n, _ in got] == ["1", "4"]
    assert got[0][1] is model[1] and got[1][1] is model[4]
    assert named_batchnorm(nn.Linear(2, 2)) == []


def test_distance_is_the_mean_squared_standardised_shift_plus_squared_log_variance_ratio():
    """Mutants: each operator, the power, the EPS in either log and in the shift's denominator, the
    mean's dimension."""
    mean, var = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([4.0, 0.25, 1.0])
    ref_mean = torch.tensor([[0.0, 1.0, 0.5], [3.0, 2.0, -1.0]])
    ref_var = torch.tensor([[1.0, 1.0, 2.0], [0.5, 0.25, 4.0]])
    got = distance(mean, var, ref_mean, ref_var)
    expected = []
    for r in range(2):
        terms = [(float(mean[i]) - float(ref_mean[r, i])) ** 2 / (float(ref_var[r, i]) + 1e-5)
                 + (math.log(float(var[i]) + 1e-5) - math.log(float(ref_var[r, i]) + 1e-5)) ** 2 for i in range(3)]
        expected.append(sum(terms) / 3)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    # Zero variances: EPS alone keeps the shift finite, 1 / 1e-5 per unit of squared shift.
    zero = distance(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([[0.0]]), torch.tensor([[0.0]]))
    assert float(zero[0]) == pytest.approx(1e5, rel=1e-5)
    # A zero variance against a unit one: the log ratio is log(1e-5) - log(1 + 1e-5).
    spread = distance(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert float(spread[0]) == pytest.approx((math.log(1e-5) - math.log(1 + 1e-5)) ** 2, rel=1e-6)
    assert EPS == 1e-5
    same = distance(mean, var, mean[None], var[None])
    assert same.tolist() == [0.0]


def test_distance_averages_over_the_channels_whatever_the_leading_dimensions():
    """Several fingerprints at once against every row: one figure per pair, the mean over the last
    dimension (a mutant that averaged over dimension 1 passed while only one fingerprint was asked)."""
    mean = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]], [[3.0, 1.0]]])        # 3 x 1 x 2
    var = torch.tensor([[[1.0, 2.0]], [[1.0, 1.0]], [[0.5, 4.0]]])
    ref_mean, ref_var = torch.tensor([[0.0, 0.0], [1.0, 2.0]]), torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    got = distance(mean, var, ref_mean, ref_var)
    assert got.shape == (3, 2)
    for i in range(3):
        assert torch.allclose(got[i], distance(mean[i, 0], var[i, 0], ref_mean, ref_var))
    assert got[0, 1].item() == 0.0 and got[1, 0].item() == 0.0


def test_the_fingerprint_is_the_mean_and_variance_of_pixels_and_of_their_laplacian_per_channel():
    """Mutants: the Laplacian's weights, its grouping per channel, every reduced dimension, the
    biased variance."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 5, 7, generator=g) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + 0.5
    x[1, 1] = torch.arange(35, dtype=torch.float32).view(5, 7) ** 2 / 50     # a curved ramp: a Laplacian of its own
    mean, var = fingerprint(x)
    ref_mean, ref_var = reference_print(x)
    assert mean.shape == (4,) and var.shape == (4,)
    assert mean.dtype == torch.float32 and var.dtype == torch.float32
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-5)
    # Integer input is taken as float.
    m8, v8 = fingerprint(torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4))
    rm, rv = reference_print(torch.arange(2 * 16).view(2, 1, 4, 4))
    torch.testing.assert_close(m8.double(), rm)
    torch.testing.assert_close(v8.double(), rv)


def test_the_laplacian_is_made_on_the_batchs_device():
    """A batch on another device (meta here, standing in for an accelerator) is fingerprinted there:
    mutants that made the kernel, or stacked the conditions' fingerprints, on the CPU passed before."""
    class Kernels(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.devices = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.devices += [a.device.type for a in args if isinstance(a, torch.Tensor)]
            return func(*args, **(kwargs or {}))

    x = torch.zeros(3, 2, 5, 5, device="meta")
    with Kernels() as seen:
        mean, var = fingerprint(x)
    assert seen.devices and set(seen.devices) == {"meta"}
    assert mean.device.type == "meta" and mean.shape == (4,) and var.shape == (4,)
    conds = [Condition("a", None, fingerprint=(torch.zeros(4), torch.ones(4))),
             Condition("b", None, fingerprint=(torch.ones(4), torch.ones(4)))]
    d = distances(conds, mean, var)
    assert d.device.type == "meta" and d.shape == (2,)


def test_images_fingerprint_normalises_uint8_pixels_first():
    """Mutants: the 255, the mean subtracted, the std divided by."""
    x = images(4, 90, 30, seed=2)
    mean, var = images_fingerprint(x, MEAN, STD)
    ref_mean, ref_var = reference_print(normalised(x))
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-6)
    # A normalisation given in float64 (a numpy array) is applied in float32 all the same: the
    # fingerprint is the one of the float32 normalised batch, bit for bit.
    m32, s32 = torch.tensor([0.4914]).view(1, -1, 1, 1), torch.tensor([0.247]).view(1, -1, 1, 1)
    want = fingerprint((x.float() / 255 - m32) / s32)
    got = images_fingerprint(x, np.array([0.4914]), np.array([0.247]))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # Two channels, each with its own mean and std.
    two = torch.stack([x[:, 0], 255 - x[:, 0]], 1)
    m2, _ = images_fingerprint(two, (0.5, 0.2), (0.25, 0.5))
    p = two.double() / 255
    assert m2[0].item() == pytest.approx(((p[:, 0] - 0.5) / 0.25).mean().item(), rel=1e-5)
    assert m2[1].item() == pytest.approx(((p[:, 1] - 0.2) / 0.5).mean().item(), rel=1e-5)


def test_fingerprint_flops_count_the_laplacian_and_three_per_element():
    """Mutants: the 5, the 3, each - 2 and the sum of pixels and Laplacian outputs."""
    assert fingerprint_flops(SHAPE) == PRINT_FLOPS == 236
    # 3 x 32 x 32: 2700 Laplacian outputs, 3072 pixels.
    assert fingerprint_flops([3, 32, 32]) == 5 * 2700 + 3 * (3072 + 2700) == 30816
    assert fingerprint_flops([2, 3, 5]) == 5 * 6 + 3 * (30 + 6) == 138
    with pytest.raises(InputError, match="too small"):
        fingerprint_flops([3, 2, 5])


def test_the_choice_costs_an_image_its_features_and_its_distance_to_every_condition():
    """Mutants: the sum of the two, the condition count, 3 features per channel."""
    bank = ConditionBank([Condition(f"c{i}", images(3, 50 * i + 20, 5, seed=i)) for i in range(3)],
                         MEAN, STD, 0.25, {})
    # features 256; distances: 3 conditions x (2 x 3 x 3 + 3 x 3) = 81
    assert bank.choice_flops(SHAPE) == FEATURE_FLOPS + 3 * (2 * 9 + 9) == 337
    # 3 x 8 x 8: features 5 x 108 + 3 x (192 + 108) + 20 x 3 = 1500; 9 features: 3 x (162 + 27) = 567
    assert bank.choice_flops([3, 8, 8]) == 1500 + 567


def test_distances_stack_every_conditions_fingerprint():
    """Mutants: the means stacked as variances or the other way round."""
    conds = [Condition("a", images(2, 10, 1, 0), fingerprint=(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))),
             Condition("b", images(2, 10, 1, 0), fingerprint=(torch.tensor([2.0, 1.0]), torch.tensor([4.0, 0.5])))]
    mean, var = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    want = distance(mean, var, torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([[1.0, 2.0], [4.0, 0.5]]))
    got = distances(conds, mean, var)
    assert torch.equal(got, want)
    # a: (1 + 0 + 0 + log(2)^2) / 2; b: (1/4 + 0 + log(4)^2 + log(2)^2) / 2
    l1, l2 = math.log(1 + 1e-5) - math.log(2 + 1e-5), math.log(1 + 1e-5) - math.log(0.5 + 1e-5)
    assert got[0].item() == pytest.approx((1 / (1 + 1e-5) + l1 ** 2) / 2, rel=1e-6)
    assert got[1].item() == pytest.approx((1 / (4 + 1e-5) + (math.log(1 + 1e-5) - math.log(4 + 1e-5)) ** 2
                                           + l2 ** 2) / 2, rel=1e-6)
    bank = ConditionBank(conds, MEAN, STD, 0.25, {})
    assert torch.equal(bank.distances(mean, var), want)


# -- weights, buffers, model checks --------------------------------------------------------------------

def test_the_weights_key_follows_the_parameters_and_not_the_buffers():
    a, b = Net(0), Net(1)
    key = weights_key(a)
    assert len(key) == 40 and key == weights_key(Net(0))
    assert key != weights_key(b)
    # Buffers are not weights.
    with torch.no_grad():
        a.bn_out.running_mean += 3.0
    assert weights_key(a) == key
    # A state dict's weights, in the model's order: b keyed with a's state is a's key.
    assert weights_key(b, a.state_dict()) == key
    assert weights_key(a, b.state_dict()) == weights_key(b)
    # One parameter changed by the smallest step changes the key.
    with torch.no_grad():
        a.conv.bias[1] = torch.nextafter(a.conv.bias[1], torch.tensor(1e9))
    assert weights_key(a) != key


def test_buffers_saved_and_loaded_are_every_batchnorm_layers_own():
    model = Net(0)
    with torch.no_grad():
        model.bn_in.running_mean.fill_(2.0)
        model.bn_out.running_var.fill_(3.0)
        model.bn_out.num_batches_tracked.fill_(7)
    saved = save_buffers(model)
    assert [sorted(s) for s in saved] == [["num_batches_tracked", "running_mean", "running_var"]] * 2
    assert saved[0]["running_mean"].tolist() == [2.0] and saved[1]["running_var"].tolist() == [3.0, 3.0]
    assert int(saved[1]["num_batches_tracked"]) == 7
    with torch.no_grad():                       # saved copies, not the buffers themselves
        model.bn_in.running_mean.fill_(-1.0)
        model.bn_out.running_var.fill_(9.0)
        model.bn_out.num_batches_tracked.fill_(0)
    assert saved[0]["running_mean"].tolist() == [2.0]
    buffer_before = model.bn_in.running_mean
    load_buffers(model, saved)
    assert model.bn_in.running_mean is buffer_before           # copied into, not replaced
    assert model.bn_in.running_mean.tolist() == [2.0] and model.bn_out.running_var.tolist() == [3.0, 3.0]
    assert int(model.bn_out.num_batches_tracked) == 7
    untracked = Net(0, track=False)
    assert save_buffers(untracked) == [{}, {}]


def test_a_model_without_running_statistics_cannot_keep_a_bank():
    """Mutants: each refusal's wording, the None test."""
    with pytest.raises(InputError) as e:
        check_bank_model(nn.Sequential(nn.Conv2d(1, 2, 1), nn.GroupNorm(1, 2)))
    assert str(e.value) == "--bn-conditions: the model has no BatchNorm layers (nothing to keep per condition)"
    with pytest.raises(InputError) as e:
        check_bank_model(Net(0, track=False))
    assert str(e.value) == "--bn-conditions: the model's BatchNorm layers keep no running statistics"
    half = Net(0)
    half.bn_out = nn.BatchNorm2d(2, track_running_stats=False)
    with pytest.raises(InputError, match="keep no running statistics"):
        check_bank_model(half)
    check_bank_model(Net(0))


def test_source_statistics_are_the_source_weights_key_and_their_running_statistics():
    """Mutants: the state dict's key names, None for no source."""
    model, source = Net(0), Net(3)
    with torch.no_grad():
        source.bn_in.running_mean.fill_(0.5)
        source.bn_out.running_var.copy_(torch.tensor([2.0, 4.0]))
    state = source.state_dict()
    key, stats = source_statistics(model, state)
    assert key == weights_key(source)
    assert list(stats) == ["bn_in", "bn_out"]
    assert stats["bn_in"][0].tolist() == [0.5] and stats["bn_in"][1].tolist() == [1.0]
    assert stats["bn_out"][0].tolist() == [0.0, 0.0] and stats["bn_out"][1].tolist() == [2.0, 4.0]
    assert source_statistics(model, None) is None


# -- re-estimation ---------------------------------------------------------------------------------------

def batch_averaged(x: torch.Tensor, sizes: list[int]) -> tuple[list[float], list[float]]:
    """What BatchNorm on the input with momentum None keeps after these batches: the average of
    the batch means and of the batches' unbiased variances."""
    z, means, variances, lo = normalised(x), [], [], 0
    for s in sizes:
        b = z[lo:lo + s].reshape(-1)
        means.append(b.mean().item())
        variances.append(b.var(unbiased=True).item())
        lo += s
    return [sum(means) / len(means)], [sum(variances) / len(variances)]


def test_refresh_estimates_each_condition_on_its_images_and_counts_its_batches():
    """Mutants: the samples' and FLOPs' sums and their starting values, the batch size passed on,
    the statistics kept per layer, the model's own buffers put back, the key refreshed for."""
    model = Net(0)
    with torch.no_grad():
        model.bn_in.running_mean.fill_(0.25)
        model.bn_in.num_batches_tracked.fill_(11)
    own = save_buffers(model)
    clean, dark = images(5, 120, 20, seed=3), images(4, 40, 5, seed=4)
    bank = ConditionBank([Condition("a", clean), Condition("b", dark)], MEAN, STD, 0.25, {})
    flops = Flops()
    got = bank.refresh(model, flops, batch_size=2)
    # 5 images: batches of 2 and 3 (a last batch of one joins the one before); 4 images: 2 and 2.
    assert flops.sizes == [2, 3, 2, 2]
    assert got == {"samples": 9, "flops": 1000 * 9 + 4 + 9 + 4 + 4}
    for c, x, sizes in ((bank.conditions[0], clean, [2, 3]), (bank.conditions[1], dark, [2, 2])):
        assert list(c.stats) == ["bn_in", "bn_out"]
        mean, var = batch_averaged(x, sizes)
        assert c.stats["bn_in"][0].tolist() == pytest.approx(mean, rel=1e-5)
        assert c.stats["bn_in"][1].tolist() == pytest.approx(var, rel=1e-5)
        assert c.stats["bn_out"][0].shape == (2,)
    assert not torch.equal(bank.conditions[0].stats["bn_out"][0], bank.conditions[1].stats["bn_out"][0])
    # The model's own statistics are as they were; the bank is marked as the model's.
    for before, after in zip(own, save_buffers(model)):
        for k in before:
            assert torch.equal(before[k], after[k]), k
    assert model.training and bank.refreshed_for == weights_key(model)


def test_refresh_runs_batches_of_256_unless_told():
    """A mutant that made the default batch 257 passed before: 258 images are 256 + 2, not one batch."""
    model = Net(0)
    bank = ConditionBank([Condition("a", images(258, 100, 30, seed=5))], MEAN, STD, 0.25, {})
    flops = Flops()
    got = bank.refresh(model, flops)
    assert flops.sizes == [256, 2]
    assert got == {"samples": 258, "flops": 1000 * 258 + 256 ** 2 + 4}


def test_refresh_passes_its_memory_format_on():
    """A mutant that left the memory format out of the re-estimation passed before."""
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.formats = []

        def forward(self, x):
            self.formats.append((x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last)))
            return self.bn(x)

    model = Recorder()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    bank = ConditionBank([Condition("a", x)], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0.25, {})
    bank.refresh(model, Flops(), 8, torch.channels_last)
    assert model.formats == [(False, True)]
    bank.refresh(model, Flops(), 8)
    assert model.formats[1:] == [(True, False)]


def test_refresh_keeps_the_source_statistics_while_the_weights_are_the_sources():
    """Only the source condition, and only for the source's own weights, takes the source's
    statistics without estimating (and without counting); mutants that joined the three tests with
    `or`, negated one, or copied the key for the statistics passed before."""
    model = Net(0)
    src_stats = {"bn_in": (torch.tensor([7.0]), torch.tensor([3.0])),
                 "bn_out": (torch.tensor([1.0, 2.0]), torch.tensor([5.0, 6.0]))}
    anchors, other = images(4, 100, 20, seed=6), images(3, 30, 5, seed=7)
    bank = ConditionBank([Condition(SOURCE, anchors), Condition("condition-1", other)], MEAN, STD, 0.25, {},
                         (weights_key(model), src_stats))
    flops = Flops()
    got = bank.refresh(model, flops, batch_size=8)
    assert flops.sizes == [3] and got == {"samples": 3, "flops": 3009}
    s = bank.conditions[0].stats
    assert {n: (m.tolist(), v.tolist()) for n, (m, v) in s.items()} == {"bn_in": ([7.0], [3.0]),
                                                                       "bn_out": ([1.0, 2.0], [5.0, 6.0])}
    assert s["bn_in"][0] is not src_stats["bn_in"][0]                  # copies: the source's stay its own
    assert bank.conditions[1].stats["bn_in"][0].tolist() == pytest.approx(batch_averaged(other, [3])[0], rel=1e-5)
    # Other weights: the source is estimated on its anchors like any condition.
    with torch.no_grad():
        model.conv.bias.add_(1.0)
    flops = Flops()
    got = bank.refresh(model, flops, batch_size=8)
    assert flops.sizes == [4, 3] and got["samples"] == 7
    assert bank.conditions[0].stats["bn_in"][0].tolist() == pytest.approx(batch_averaged(anchors, [4])[0], rel=1e-5)
    # The source's weights, but a condition that is not the source: estimated.
    bank = ConditionBank([Condition("condition-1", other)], MEAN, STD, 0.25, {}, (weights_key(model), src_stats))
    assert bank.refresh(model, Flops(), batch_size=8)["samples"] == 3
    assert bank.conditions[0].stats["bn_in"][0].tolist() != [7.0]
    # No source statistics: the source condition is estimated.
    bank = ConditionBank([Condition(SOURCE, anchors)], MEAN, STD, 0.25, {}, None)
    assert bank.refresh(model, Flops(), batch_size=8)["samples"] == 4


def test_refresh_puts_the_models_statistics_back_when_a_pass_fails():
    class Failing(Net):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("pass failed")

    model = Failing(0)
    with torch.no_grad():
        model.bn_out.running_var.fill_(4.0)
    bank = ConditionBank([Condition("a", images(3, 100, 20, seed=8))], MEAN, STD, 0.25, {})
    with pytest.raises(RuntimeError, match="pass failed"):
        bank.refresh(model, Flops())
    assert model.bn_out.running_var.tolist() == [4.0, 4.0] and int(model.bn_out.num_batches_tracked) == 0
    assert bank.refreshed_for is None


# -- choosing ----------------------------------------------------------------------------------------

class FixedChooser:
    """Chooses the given conditions, whatever the features."""

    def __init__(self, choice):
        self.choice, self.seen = torch.tensor(choice), []

    def choose_batch(self, features):
        self.seen.append(features)
        return self.choice.clone()


def three_bank() -> ConditionBank:
    conds = [Condition(n, images(4, 60 * i + 30, 4 + 10 * i, seed=10 + i)) for i, n in enumerate(["source", "x", "y"])]
    return ConditionBank(conds, MEAN, STD, 0.25, {})


def test_a_new_bank_has_chosen_nothing_and_is_not_refreshed():
    bank = three_bank()
    assert bank.chosen == [0, 0, 0] and bank.refreshed_for is None and bank._chooser is None
    assert bank.radius == 0.25 and bank.match == {} and bank.source is None
    assert bank.mean == MEAN and bank.std == STD


def test_the_chooser_is_fitted_once_on_the_conditions_kept_images():
    bank = three_bank()
    chooser = bank.chooser()
    assert isinstance(chooser, ConditionChooser) and chooser.names == ["source", "x", "y"]
    assert bank.chooser() is chooser
    want = ConditionChooser.from_images(["source", "x", "y"], [c.images for c in bank.conditions], MEAN, STD)
    for got, ref in zip(chooser.models, want.models):
        np.testing.assert_array_equal(got.mean, ref.mean)
        np.testing.assert_array_equal(got.precision, ref.precision)
    # Each condition's own images are chosen as that condition.
    for k, c in enumerate(bank.conditions):
        assert bank.choose(torch.from_numpy((c.images.numpy() / 255 - 0.5) / 0.25).float()).tolist() == [k] * 4


def test_choose_counts_each_image_under_its_condition_until_taken():
    """Mutants: the count's increment (+= 1 as = 1, -= 1, += 2), the reset's length, the sum taken."""
    bank = three_bank()
    bank._chooser = FixedChooser([2, 0, 2, 2, 1])
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert bank.choose(x).tolist() == [2, 0, 2, 2, 1]
    np.testing.assert_allclose(bank._chooser.seen[0], bb.image_features(x))
    assert bank.chosen == [1, 1, 3]
    bank.choose(x[:2])
    assert bank.chosen == [2, 2, 6]
    assert bank.take_selected() == 10
    assert bank.chosen == [0, 0, 0]
    assert bank.take_selected() == 0


def stats_bank() -> ConditionBank:
    """Two conditions of one layer (the input's BatchNorm): mean 0, var 1 and mean 2, var 4."""
    conds = [Condition(SOURCE, images(3, 100, 10, 0), {"bn": (torch.tensor([0.0]), torch.tensor([1.0]))}),
             Condition("c", images(3, 100, 10, 1), {"bn": (torch.tensor([2.0]), torch.tensor([4.0]))})]
    return ConditionBank(conds, MEAN, STD, 0.25, {})


def flat(*values) -> torch.Tensor:
    """Images of 1 x 3 x 3 pixels, each all one value."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 3, 3).contiguous()


def per_image(y: torch.Tensor) -> list:
    assert bool((y == y[:, :, :1, :1]).all())
    return y[:, 0, 0, 0].tolist()


def bn_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module("bn", nn.BatchNorm2d(1, eps=1e-12))
    with torch.no_grad():
        model.bn.running_mean.fill_(10.0)
        model.bn.running_var.fill_(100.0)
    return model


def test_an_attached_bank_normalises_each_image_with_its_conditions_statistics_in_eval_only():
    """Mutants: the training test, the meta-device test (`or` as `and`), the cache's key test, the
    keyword argument's lookup, the plain forward put back on remove."""
    model, bank = bn_model().eval(), stats_bank()
    bank._chooser = FixedChooser([1, 0, 1])
    x = flat(6.0, 6.0, 4.0)
    handle = bank.attach(model)
    # (6 - 2) / 2, (6 - 0) / 1, (4 - 2) / 2
    assert per_image(model(x)) == [2.0, 6.0, 1.0]
    assert bank.chosen == [1, 2]
    assert per_image(model(input=x)) == [2.0, 6.0, 1.0]               # the batch given by keyword
    assert bank.chosen == [2, 4]
    assert model.bn.running_mean.tolist() == [10.0]                   # lent, not copied in
    assert [k for k in model.state_dict()] == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                               "bn.num_batches_tracked"]
    # A shape-only pass on the meta device is the plain forward (the chooser never sees it).
    twin = bn_model().eval()
    bank.attach(twin)
    twin.to("meta")
    assert twin(torch.zeros(3, 1, 3, 3, device="meta")).device.type == "meta"
    assert bank.chosen == [2, 4] and len(bank._chooser.seen) == 2
    # Training: the batch's own statistics, nothing chosen.
    model.train()
    out = per_image(model(x))
    assert bank.chosen == [2, 4]
    v = torch.tensor([6.0, 6.0, 4.0])
    assert out == pytest.approx(((v - v.mean()) / v.var(unbiased=False).sqrt()).tolist(), abs=1e-5)
    model.eval()
    with torch.no_grad():                       # the training pass moved the model's own statistics
        model.bn.running_mean.fill_(10.0)
        model.bn.running_var.fill_(100.0)
    handle.remove()
    # (6 - 10) / 10: the model's own statistics again.
    assert per_image(model(x)) == pytest.approx([-0.4, -0.4, -0.6])
    assert bank.chosen == [2, 4] and "forward" not in model.__dict__
    handle.remove()                                                   # a second remove is harmless
    assert "forward" not in model.__dict__


def test_a_training_pass_given_by_keyword_is_the_plain_forward():
    """A mutant that dropped the keyword arguments on the plain path passed before."""
    model, bank = bn_model().train(), stats_bank()
    bank._chooser = FixedChooser([1, 0])
    bank.attach(model)
    assert per_image(model(input=flat(3.0, 5.0))) == pytest.approx([-1.0, 1.0], abs=1e-5)
    assert bank.chosen == [0, 0]


def test_the_statistics_lent_are_made_once_per_device_and_dtype():
    model, bank = bn_model().eval(), stats_bank()
    bank._chooser = FixedChooser([1])
    bank.attach(model)
    x = flat(6.0)
    assert per_image(model(x)) == [2.0]
    bank.conditions[1].stats = {"bn": (torch.tensor([5.0]), torch.tensor([1.0]))}
    assert per_image(model(x)) == [2.0]                               # still the statistics first lent
    model.double()
    assert per_image(model(x.double())) == pytest.approx([1.0])      # a new dtype: made again, (6 - 5) / 1
    assert model(x.double()).dtype == torch.float64


def test_selecting_routes_inside_and_restores_the_plain_forward_after_even_on_error():
    model, bank = bn_model().eval(), stats_bank()
    bank._chooser = FixedChooser([1])
    x = flat(6.0)
    with bank.selecting(model) as b:
        assert b is bank
        assert per_image(model(x)) == [2.0]
    assert per_image(model(x)) == pytest.approx([-0.4])
    with pytest.raises(ValueError):
        with bank.selecting(model):
            raise ValueError("inside")
    assert "forward" not in model.__dict__ and bank.chosen == [0, 1]


# -- records -------------------------------------------------------------------------------------------

def test_a_bank_saves_and_describes_every_condition():
    stats = {"bn": (torch.tensor([1.0]), torch.tensor([2.0]))}
    fp = (torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0]))
    conds = [Condition(SOURCE, images(3, 100, 10, 0), stats, 2, {"first_run": "source", "last_seen": 4}, fp),
             Condition("condition-2", images(5, 50, 10, 1), {}, 1, {}, fp)]
    match = {"condition": "condition-2", "new": True}
    bank = ConditionBank(conds, MEAN, STD, 0.5, match)
    saved = bank.to_saved()
    assert [type(s) for s in saved] == [SavedCondition] * 2
    assert [(s.name, s.nights, s.info) for s in saved] == [(SOURCE, 2, {"first_run": "source", "last_seen": 4}),
                                                            ("condition-2", 1, {})]
    assert torch.equal(saved[1].images, conds[1].images) and saved[0].stats is stats and saved[1].fingerprint is fp
    assert bank.describe() == {
        "conditions": [{"name": SOURCE, "images": 3, "nights": 2, "first_run": "source", "last_seen": 4},
                       {"name": "condition-2", "images": 5, "nights": 1}],
        "tonight": match, "radius": 0.5, "file": "bn_bank.safetensors"}


def test_a_bank_is_written_only_when_its_statistics_are_the_models(tmp_path):
    model = Net(0)
    a, b = images(3, 100, 10, 0), images(2, 30, 3, 1)
    bank = ConditionBank([Condition(SOURCE, a, fingerprint=images_fingerprint(a, MEAN, STD)),
                          Condition("condition-1", b, fingerprint=images_fingerprint(b, MEAN, STD))],
                         MEAN, STD, 0.25, {})
    assert write_bank_for(None, model, tmp_path) is None
    assert write_bank_for(bank, model, tmp_path) is None                 # never refreshed
    assert not (tmp_path / BANK_FILE).exists()
    bank.refresh(model, Flops())
    size = write_bank_for(bank, model, str(tmp_path))
    assert size == (tmp_path / BANK_FILE).stat().st_size and size > 0
    back = read_bank(tmp_path, SHAPE, model)
    assert [c.name for c in back] == [SOURCE, "condition-1"]
    assert torch.equal(back[1].stats["bn_in"][0], bank.conditions[1].stats["bn_in"][0])
    (tmp_path / BANK_FILE).unlink()
    with torch.no_grad():
        model.conv.weight.mul_(2.0)
    assert write_bank_for(bank, model, tmp_path) is None                 # other weights now
    assert not (tmp_path / BANK_FILE).exists()


def saved_condition(model, name, x, nights=1, info=None, shift=0.0, fp=None):
    fp = fp if fp is not None else images_fingerprint(x, MEAN, STD)
    return SavedCondition(name, x, layer_stats(model, shift), nights, dict(info or {}), fp)


def test_a_deployed_models_bank_selects_with_its_saved_statistics(tmp_path):
    """Mutants: the card's input shape, mean and std passed on, the radius and match, the attach."""
    model = Net(0)
    card = SimpleNamespace(input_shape=(1, 6, 6), mean=MEAN, std=STD)
    assert attach_saved_bank(model, tmp_path, card) is None
    a, b = images(4, 200, 3, 0), images(4, 40, 40, 1)
    write_bank(tmp_path / BANK_FILE, [saved_condition(model, SOURCE, a, 3, {"first_run": "source"}),
                                      saved_condition(model, "condition-1", b, 2, {"last_seen": 1}, shift=5.0)])
    bank = attach_saved_bank(model.eval(), tmp_path, card)
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-1"]
    assert [c.nights for c in bank.conditions] == [3, 2]
    assert [c.info for c in bank.conditions] == [{"first_run": "source"}, {"last_seen": 1}]
    assert bank.conditions[1].stats["bn_out"][1].tolist() == [6.0, 6.0]
    torch.testing.assert_close(bank.conditions[1].fingerprint[0], images_fingerprint(b, MEAN, STD)[0])
    assert bank.radius == 0.0 and bank.match == {} and bank.mean == MEAN and bank.std == STD and bank.source is None
    assert "forward" in model.__dict__                                  # attached: eval passes choose
    with torch.no_grad():
        model(normalised(b).float())
    assert bank.chosen == [0, 4]
    with pytest.raises(InputError, match="the model takes uint8"):
        attach_saved_bank(model, tmp_path, SimpleNamespace(input_shape=(1, 5, 5), mean=MEAN, std=STD))


def test_a_runs_bank_is_reread_without_statistics_to_be_estimated_for_other_weights(tmp_path):
    model = Net(0)
    card = SimpleNamespace(input_shape=[1, 6, 6], mean=MEAN, std=STD)
    assert run_bank_for(model, tmp_path, card) is None
    a, b = images(4, 200, 3, 0), images(3, 40, 40, 1)
    write_bank(tmp_path / BANK_FILE, [saved_condition(model, SOURCE, a, 1, {"last_seen": 0}),
                                      saved_condition(model, "condition-1", b, 4, {"first_run": "r"})])
    bank = run_bank_for(model, tmp_path, card)
    assert [(c.name, c.nights, c.info, c.stats) for c in bank.conditions] == [
        (SOURCE, 1, {"last_seen": 0}, {}), ("condition-1", 4, {"first_run": "r"}, {})]
    assert torch.equal(bank.conditions[1].images, b)
    torch.testing.assert_close(bank.conditions[0].fingerprint[1], images_fingerprint(a, MEAN, STD)[1])
    assert bank.radius == 0.0 and bank.match == {} and bank.source is None
    assert bank.mean == MEAN and bank.std == STD
    assert "forward" not in model.__dict__
    source = Net(2)
    bank = run_bank_for(model, tmp_path, card, source.state_dict())
    assert bank.source[0] == weights_key(source) and list(bank.source[1]) == ["bn_in", "bn_out"]
    with pytest.raises(InputError, match="do not fit the model"):
        run_bank_for(nn.Sequential(nn.BatchNorm2d(1)), tmp_path, card)


# -- building the bank over nights ----------------------------------------------------------------------

SEED = 4


def tonight_pick(n: int, images_: int, seed: int = SEED) -> torch.Tensor:
    """The night's draw: its own generator, seeded seed + 15485863."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 15485863))[:images_]


def train_set(level=120, spread=30, n=20) -> IndexedDataset:
    x = images(n, level, spread, seed=20)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)         # each image tells which it is
    return dataset(x, "train")


def build(start, model, train, replay, keep=3, n_images=8, radius=0.25, run="night-1", source_state=None, seed=SEED):
    return build_bank(Path(start), model, SHAPE, MEAN, STD, train, replay, keep, n_images, radius, seed, run,
                      source_state)


def test_the_first_bank_is_the_source_on_the_anchors_and_tonight_new(tmp_path):
    """No bank in the start checkpoint: the source on the replay anchors, tonight's seeded draw a new
    condition; the cost counts both fingerprints and the description of both."""
    model, train = Net(0), train_set()
    replay = dataset(images(5, 200, 5, seed=21), "replay")
    source = Net(5)
    bank, cost = build(tmp_path, model, train, replay, run="night-1", source_state=source.state_dict())
    picked = tonight_pick(20, 8)
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-1"]
    src, new = bank.conditions
    assert torch.equal(src.images, replay.images) and src.nights == 1
    assert src.info == {"first_run": "source", "last_seen": 0} and src.stats == {}
    torch.testing.assert_close(src.fingerprint[0], images_fingerprint(replay.images, MEAN, STD)[0])
    torch.testing.assert_close(src.fingerprint[1], images_fingerprint(replay.images, MEAN, STD)[1])
    assert new.images[:, 0, 0, 0].tolist() == picked.tolist()
    assert torch.equal(new.images, train.images[picked])
    assert new.nights == 1 and new.info == {"first_run": "night-1", "last_seen": 1}
    torch.testing.assert_close(new.fingerprint[1], images_fingerprint(train.images[picked], MEAN, STD)[1])
    d = float(distance(*images_fingerprint(train.images[picked], MEAN, STD),
                       *[t[None] for t in images_fingerprint(replay.images, MEAN, STD)])[0])
    assert d > 0.25
    assert bank.match == {"distances": {SOURCE: round(d, 4)}, "nearest": SOURCE, "condition": "condition-1",
                          "new": True}
    assert round(d, 4) != round(d, 5)
    # fingerprints: 8 tonight + 5 anchors; described: 5 + 8 kept images
    assert cost == {"samples": 26, "flops": 13 * PRINT_FLOPS + 13 * FEATURE_FLOPS}
    assert bank.radius == 0.25 and bank.mean == MEAN and bank.std == STD
    assert bank.source[0] == weights_key(source) and list(bank.source[1]) == ["bn_in", "bn_out"]
    assert torch.equal(bank.source[1]["bn_out"][1], source.bn_out.running_var)
    assert isinstance(bank._chooser, ConditionChooser) and bank._chooser.names == [SOURCE, "condition-1"]
    assert bank.chosen == [0, 0]


def test_the_nights_draw_is_seeded_and_capped_at_the_training_set(tmp_path):
    """Mutants: the seed's offset, the count drawn."""
    model, train, replay = Net(0), train_set(), dataset(images(5, 200, 3, seed=21))
    bank, _ = build(tmp_path, model, train, replay, n_images=6, seed=9)
    assert bank.conditions[1].images[:, 0, 0, 0].tolist() == tonight_pick(20, 6, seed=9).tolist()
    assert tonight_pick(20, 6, seed=9).tolist() != tonight_pick(20, 6, seed=10).tolist()
    # The run's own random stream is untouched.
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    build(tmp_path, model, train, replay, n_images=6, seed=9)
    assert torch.equal(torch.rand(1), before)
    bank, cost = build(tmp_path, model, train, replay, n_images=50)
    assert sorted(bank.conditions[1].images[:, 0, 0, 0].tolist()) == list(range(20))
    assert cost["samples"] == 25 + 25


def test_tonight_near_the_source_is_matched_to_it_and_the_anchors_stay(tmp_path):
    model = Net(0)
    replay = dataset(images(6, 120, 30, seed=22))
    train = train_set(120, 30)
    bank, cost = build(tmp_path, model, train, replay, radius=5.0)
    assert [c.name for c in bank.conditions] == [SOURCE]
    src = bank.conditions[0]
    assert torch.equal(src.images, replay.images) and src.nights == 2
    assert src.info == {"first_run": "source", "last_seen": 1}
    torch.testing.assert_close(src.fingerprint[0], images_fingerprint(replay.images, MEAN, STD)[0])
    assert bank.match["condition"] == SOURCE and bank.match["new"] is False and "dropped" not in bank.match
    # fingerprints 8 + 6; described: the 6 anchors
    assert cost == {"samples": 20, "flops": 14 * PRINT_FLOPS + 6 * FEATURE_FLOPS}


def write_start(start: Path, model, conditions) -> None:
    start.mkdir(parents=True, exist_ok=True)
    write_bank(start / BANK_FILE, conditions)


def far_print(level: float):
    return (torch.full((2,), level), torch.full((2,), 1.0 + level))


def test_a_match_takes_tonights_images_and_the_generation_after_the_newest(tmp_path):
    """A saved bank: tonight matches condition-2 (its saved fingerprint is tonight's): that condition
    takes tonight's images and fingerprint, one more night and the generation after the newest
    last_seen; nothing else changes. Only tonight's images are fingerprinted."""
    model, train = Net(0), train_set()
    picked = tonight_pick(20, 8)
    tonight_fp = images_fingerprint(train.images[picked], MEAN, STD)
    old = images(3, 60, 5, seed=30)
    write_start(tmp_path, model, [
        saved_condition(model, SOURCE, images(4, 200, 3, 31), 5, {"first_run": "source", "last_seen": 3},
                        fp=far_print(3.0)),
        saved_condition(model, "condition-1", images(2, 10, 3, 32), 2, {"first_run": "a", "last_seen": 6},
                        fp=far_print(6.0)),
        saved_condition(model, "condition-2", old, 4, {"first_run": "b", "last_seen": 2},
                        fp=(tonight_fp[0] + 0.01, tonight_fp[1]))])
    bank, cost = build(tmp_path, model, train, dataset(images(5, 0, 1, 33)), keep=3, radius=0.25, run="night-9")
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-1", "condition-2"]
    src, one, two = bank.conditions
    assert torch.equal(two.images, train.images[picked]) and two.nights == 5
    assert two.info == {"first_run": "b", "last_seen": 7}
    assert torch.equal(two.fingerprint[0], tonight_fp[0]) and torch.equal(two.fingerprint[1], tonight_fp[1])
    assert (src.nights, src.info, one.nights, one.info) == (5, {"first_run": "source", "last_seen": 3},
                                                            2, {"first_run": "a", "last_seen": 6})
    assert len(src.images) == 4 and len(one.images) == 2
    assert src.stats["bn_out"][1].tolist() == [1.0, 1.0]               # the saved statistics kept
    assert bank.match["condition"] == "condition-2" and bank.match["new"] is False
    assert bank.match["nearest"] == "condition-2" and "dropped" not in bank.match
    assert list(bank.match["distances"]) == [SOURCE, "condition-1", "condition-2"]
    assert bank.match["distances"]["condition-2"] == round(float(distance(
        *tonight_fp, (tonight_fp[0] + 0.01)[None], tonight_fp[1][None])[0]), 4)
    # 8 tonight fingerprinted; described 4 + 2 + 8
    assert cost == {"samples": 8 + 14, "flops": 8 * PRINT_FLOPS + 14 * FEATURE_FLOPS}


def test_a_distance_of_exactly_the_radius_matches(tmp_path):
    """A mutant that matched only strictly within the radius passed before."""
    model, train = Net(0), train_set()
    picked = tonight_pick(20, 8)
    tonight_fp = images_fingerprint(train.images[picked], MEAN, STD)
    ref = (tonight_fp[0] + 0.5, tonight_fp[1] * 1.5)
    write_start(tmp_path, model, [saved_condition(model, SOURCE, images(4, 200, 3, 31), fp=ref)])
    d = float(distances([Condition(SOURCE, None, fingerprint=ref)], *tonight_fp)[0])
    bank, _ = build(tmp_path, model, train, dataset(images(5, 0, 1, 33)), radius=d)
    assert bank.match["condition"] == SOURCE and len(bank.conditions) == 1
    bank, _ = build(tmp_path, model, train, dataset(images(5, 0, 1, 33)), radius=math.nextafter(d, 0.0))
    assert bank.match["condition"] == "condition-1" and len(bank.conditions) == 2


def test_a_new_condition_takes_the_first_free_number(tmp_path):
    """Mutants: the number's start (1 as 2) and its step."""
    model, train = Net(0), train_set()
    for kept, new in ((["condition-1", "condition-3"], "condition-2"), (["condition-2"], "condition-1"),
                      (["condition-1", "condition-2"], "condition-3")):
        start = tmp_path / new / "-".join(kept)
        write_start(start, model, [saved_condition(model, SOURCE, images(4, 200, 3, 31), fp=far_print(5.0))] + [
            saved_condition(model, name, images(2, 10, 3, 32), info={"last_seen": i + 1}, fp=far_print(8.0 + i))
            for i, name in enumerate(kept)])
        bank, _ = build(start, model, train, dataset(images(5, 0, 1, 33)), keep=5)
        assert [c.name for c in bank.conditions] == [SOURCE, *kept, new]
        assert bank.match["condition"] == new and bank.match["new"] is True
        assert bank.conditions[-1].info == {"first_run": "night-1", "last_seen": len(kept) + 1}


def test_the_generation_counts_a_condition_without_last_seen_as_zero(tmp_path):
    """A mutant that read a missing last_seen as 1 passed before: a bank whose conditions record none
    starts its generations at 1."""
    model, train = Net(0), train_set()
    write_start(tmp_path, model, [saved_condition(model, SOURCE, images(4, 200, 3, 31), fp=far_print(5.0))])
    bank, _ = build(tmp_path, model, train, dataset(images(5, 0, 1, 33)))
    assert bank.conditions[1].info == {"first_run": "night-1", "last_seen": 1}


def bank_of_three(start, model, seen=(2, 1, 3), fp2=None):
    """source (last_seen 0), condition-1, -2, -3 with the given last_seen."""
    write_start(start, model, [saved_condition(model, SOURCE, images(4, 200, 3, 31), info={"last_seen": 0},
                                               fp=far_print(5.0))] + [
        saved_condition(model, f"condition-{i + 1}", images(2, 10 + 20 * i, 3, 32 + i), info={"last_seen": s},
                        fp=fp2 if (fp2 is not None and i == 1) else far_print(8.0 + i)) for i, s in enumerate(seen)])


def test_the_least_recently_matched_makes_room_never_the_source(tmp_path):
    """Mutants: the eviction's bound, the slice that spares the source (1 as 2), the key's default,
    the "dropped" record."""
    model, train, replay = Net(0), train_set(), dataset(images(5, 0, 1, 33))
    bank_of_three(tmp_path / "a", model, seen=(2, 1, 3))
    bank, cost = build(tmp_path / "a", model, train, replay, keep=4, run="night-4")
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-1", "condition-3", "condition-4"]
    assert bank.match["dropped"] == ["condition-2"]
    assert bank.conditions[-1].info == {"first_run": "night-4", "last_seen": 4}
    # described: 4 + 2 + 2 + 8 kept images (the dropped condition's are not described)
    assert cost == {"samples": 8 + 16, "flops": 8 * PRINT_FLOPS + 16 * FEATURE_FLOPS}
    assert bank._chooser.names == [SOURCE, "condition-1", "condition-3", "condition-4"]
    # The oldest first at position 1: the source (last_seen 0) stays all the same.
    bank_of_three(tmp_path / "b", model, seen=(1, 2, 3))
    bank, _ = build(tmp_path / "b", model, train, replay, keep=3)
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-3", "condition-4"]
    assert bank.match["dropped"] == ["condition-1", "condition-2"]
    # K of 5 holds all five: nothing dropped.
    bank, _ = build(tmp_path / "b", model, train, replay, keep=5)
    assert len(bank.conditions) == 5 and "dropped" not in bank.match
    # K of 1: only the source is left.
    bank, _ = build(tmp_path / "b", model, train, replay, keep=1)
    assert [c.name for c in bank.conditions] == [SOURCE]
    assert bank.match["dropped"] == ["condition-1", "condition-2", "condition-3", "condition-4"]


def test_a_condition_that_records_no_last_seen_is_the_oldest(tmp_path):
    """A mutant that read a missing last_seen as 1 when choosing whom to drop passed before."""
    model, train = Net(0), train_set()
    write_start(tmp_path, model, [
        saved_condition(model, SOURCE, images(4, 200, 3, 31), info={"last_seen": 0}, fp=far_print(5.0)),
        saved_condition(model, "condition-1", images(2, 10, 3, 32), info={"last_seen": 1}, fp=far_print(8.0)),
        saved_condition(model, "condition-2", images(2, 30, 3, 33), info={}, fp=far_print(9.0))])
    bank, _ = build(tmp_path, model, train, dataset(images(5, 0, 1, 33)), keep=3)
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-1", "condition-3"]
    assert bank.match["dropped"] == ["condition-2"]


def test_a_lowered_k_trims_the_bank_after_a_match_too(tmp_path):
    model, train = Net(0), train_set()
    tonight_fp = images_fingerprint(train.images[tonight_pick(20, 8)], MEAN, STD)
    bank_of_three(tmp_path, model, seen=(2, 1, 3), fp2=tonight_fp)
    bank, _ = build(tmp_path, model, train, dataset(images(5, 0, 1, 33)), keep=3)
    # condition-2 matched (now last_seen 4): condition-1 (2) is the oldest, then none.
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-2", "condition-3"]
    assert bank.match["condition"] == "condition-2" and bank.match["new"] is False
    assert bank.match["dropped"] == ["condition-1"]
    assert bank.conditions[1].info == {"last_seen": 4} and bank.conditions[1].nights == 2


def test_a_model_without_batchnorm_is_refused_before_anything_is_read(tmp_path):
    (tmp_path / BANK_FILE).write_bytes(b"not a bank")
    with pytest.raises(InputError, match="has no BatchNorm layers"):
        build(tmp_path, nn.Sequential(nn.Conv2d(1, 1, 1)), train_set(), dataset(images(5, 0, 1, 33)))
    with pytest.raises(InputError, match="unreadable or corrupt"):
        build(tmp_path, Net(0), train_set(), dataset(images(5, 0, 1, 33)))


def test_a_saved_bank_that_does_not_fit_the_model_is_refused(tmp_path):
    """Mutants that read the start's or a deployed bank without checking it against the model's
    BatchNorm layers passed before."""
    other = nn.Sequential(nn.BatchNorm2d(1))
    other.add_module("conv", nn.Conv2d(1, 2, 1))
    other.add_module("bn_out", nn.BatchNorm2d(3))
    write_start(tmp_path, other, [saved_condition(other, SOURCE, images(4, 200, 3, 31))])
    with pytest.raises(InputError, match=r"do not fit the model \(layer bn_in: bank None, model 1 features\)"):
        build(tmp_path, Net(0), train_set(), dataset(images(5, 0, 1, 33)))
    card = SimpleNamespace(input_shape=(1, 6, 6), mean=MEAN, std=STD)
    with pytest.raises(InputError, match="do not fit the model"):
        attach_saved_bank(Net(0), tmp_path, card)


def test_make_bank_passes_the_runs_options_on(tmp_path):
    """Mutants: each option passed to build_bank in its place, the bank off without --bn-conditions."""
    model, train = Net(0), train_set()
    replay = dataset(images(5, 200, 3, seed=21))
    source = Net(6)
    memory = SimpleNamespace(replay=replay, source=source.state_dict())
    card = SimpleNamespace(input_shape=(1, 6, 6), mean=MEAN, std=STD)
    assert make_bank(TrainConfig(), tmp_path, model, card, train, memory, "night-1") == (None, None)
    cfg = TrainConfig(bn_conditions=2, bn_condition_images=5, bn_condition_radius=0.125, seed=11)
    bank, cost = make_bank(cfg, str(tmp_path), model, card, train, memory, "night-3")
    assert bank.radius == 0.125 and bank.mean == MEAN and bank.std == STD
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-1"]
    assert bank.conditions[1].images[:, 0, 0, 0].tolist() == tonight_pick(20, 5, seed=11).tolist()
    assert bank.conditions[1].info["first_run"] == "night-3"
    assert torch.equal(bank.conditions[0].images, replay.images)
    assert bank.source[0] == weights_key(source)
    assert cost == {"samples": 10 + 10, "flops": 10 * PRINT_FLOPS + 10 * FEATURE_FLOPS}
    # K of 2 after a second new condition: the first made room.
    cfg = TrainConfig(bn_conditions=2, bn_condition_images=5, bn_condition_radius=1e-6, seed=11)
    start = tmp_path / "kept"
    write_start(start, model, [saved_condition(model, SOURCE, images(4, 200, 3, 31), fp=far_print(5.0)),
                               saved_condition(model, "condition-1", images(2, 9, 3, 32), fp=far_print(7.0))])
    bank, _ = make_bank(cfg, start, model, card, train, memory, "night-4")
    assert [c.name for c in bank.conditions] == [SOURCE, "condition-2"]
