"""The condition chooser (edge_sel/predict/conditions.py) on numbers worked out here another way:
an image's features against torch's own mean, variance and a Laplacian convolution; the FLOPs
of a frame's features and distances against the arithmetic its code runs; a condition's Gaussian, its reach and its saved form; the
batch's mixture (EM) and the stream's forward filter against plain loops. No model and no data set,
so these run in milliseconds."""

import math

import numpy as np
import pytest
import torch

from edge_sel.errors import InputError
from edge_sel.predict import conditions as cond
from edge_sel.predict.conditions import (DEFAULT_WINDOW, EVIDENCE_CAP, ConditionChooser, ConditionModel,
                                         distance_flops, feature_flops, image_features, normalised, pixel_features)

pytestmark = pytest.mark.usefixtures("one_thread")
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def reference_features(x: torch.Tensor) -> np.ndarray:
    """Per channel: the mean, the log variance (+1e-5) of the pixels, the log variance of the
    valid 3 x 3 Laplacian's outputs; channel blocks in that order."""
    x = x.to(torch.float64)
    n, c = x.shape[:2]
    edges = torch.nn.functional.conv2d(x.reshape(n * c, 1, *x.shape[2:]), LAPLACIAN[None, None]).reshape(n, c, -1)
    flat = x.reshape(n, c, -1)
    return torch.cat([flat.mean(2), torch.log(flat.var(2, unbiased=False) + 1e-5),
                      torch.log(edges.var(2, unbiased=False) + 1e-5)], dim=1).numpy()


def test_features_of_a_normalised_batch_are_mean_log_variance_and_log_laplacian_variance():
    """Mutants: every sum, power, slice and constant of _sums and _features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 5, 7, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + 0.5
    x[1, 1] = torch.arange(35, dtype=torch.float64).view(5, 7) ** 2 / 50      # a curved ramp: edges of its own
    got = image_features(x)
    assert got.shape == (4, 6) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference_features(x), rtol=1e-12, atol=1e-12)
    single = x.numpy().astype(np.float32)           # summed in float64 whatever comes in
    np.testing.assert_allclose(image_features(single), reference_features(torch.from_numpy(single)), rtol=1e-12,
                               atol=1e-9)
    np.testing.assert_allclose(image_features(torch.from_numpy(single)), reference_features(torch.from_numpy(single)),
                               rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(image_features(x.clone().requires_grad_()), got)     # a tensor that tracks gradients


def test_a_flat_image_has_the_floor_of_variance_not_a_negative_one():
    """Mutants: the 0.0 floor of both variances (rounding can make them slightly negative), 1e-5."""
    x = torch.full((1, 1, 4, 4), 0.1, dtype=torch.float64)
    got = image_features(x)
    assert got[0, 0] == pytest.approx(0.1, abs=1e-15)
    assert got[0, 1] == pytest.approx(math.log(1e-5), abs=1e-9) and got[0, 2] == pytest.approx(math.log(1e-5), abs=1e-9)
    s1, s2 = np.array([[1.0]]), np.array([[0.9]])      # a sum of squares below the squared sum: rounding
    f = cond._features(s1, s2, s1, s2, 1, 1, 0.0, 1.0)
    np.testing.assert_allclose(f, [[1.0, math.log(1e-5), math.log(1e-5)]])


def test_features_from_uint8_pixels_are_those_of_the_normalised_images():
    """Mutants: the offset and scale from pixel units (255, the sign, std) and their use."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 6, 5), generator=g, dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x = normalised(images, mean, std)
    expect = reference_features(x.to(torch.float64))
    np.testing.assert_allclose(pixel_features(images, mean, std), expect, rtol=1e-5, atol=1e-5)
    exact = (images.to(torch.float64) / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    np.testing.assert_allclose(pixel_features(images, mean, std), reference_features(exact), rtol=1e-10, atol=1e-10)
    offset, scale = cond._pixel_units((0.5,), (0.25,))
    np.testing.assert_allclose(offset, [-2.0])
    np.testing.assert_allclose(scale, [1 / 63.75])


def test_normalised_is_pixels_over_255_less_the_mean_over_the_std_in_float32():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    x = normalised(images, [0.5, 0.2], [0.25, 0.1])
    assert x.dtype == torch.float32 and x.shape == (1, 2, 1, 2)
    assert torch.allclose(x, torch.tensor([[[[-2.0, 2.0]], [[0.0, 2.0]]]]), atol=1e-6)


class Counted(np.ndarray):
    """An array that counts the arithmetic numpy does on it: one FLOP per output element of an
    elementwise operation, one per element summed by a reduction, two per multiply-add of a matrix
    product or of an einsum's summed products."""
    flops = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [i.view(np.ndarray) if isinstance(i, Counted) else i for i in inputs]
        out = getattr(ufunc, method)(*plain, **kwargs)
        if ufunc is np.matmul:
            Counted.flops += 2 * np.size(out) * np.shape(plain[0])[-1]
        elif method == "reduce":
            Counted.flops += np.size(plain[0])
        else:
            Counted.flops += np.size(out)
        return out.view(Counted) if isinstance(out, np.ndarray) else out

    def __array_function__(self, func, types, args, kwargs):
        plain = [_plain(a) for a in args]
        if func is np.einsum:
            assert plain[0] == "ncp,ncp->nc"                     # products summed over p
            Counted.flops += 2 * plain[1].size
            return np.einsum(*plain, **kwargs).view(Counted)
        out = func(*plain, **kwargs)
        return out.view(Counted) if isinstance(out, np.ndarray) else out


def _plain(a):
    if isinstance(a, (list, tuple)):
        return type(a)(_plain(b) for b in a)
    return a.view(np.ndarray) if isinstance(a, Counted) else a


def executed_flops(run, *arrays) -> int:
    Counted.flops = 0
    run(*(np.asarray(a, dtype=np.float64).view(Counted) for a in arrays))
    return Counted.flops


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 5, 7), (2, 3, 3), (1, 8, 8)])
def test_the_flops_charged_for_an_images_features_are_those_its_code_runs(shape):
    """Counted while `pixel_features` computes them (its sums and the per-channel arithmetic on
    them): a stencil, a feature or a sum added or dropped changes both or fails here."""
    images = torch.randint(0, 256, (1, *shape), generator=torch.Generator().manual_seed(0))
    offset, scale = cond._pixel_units((0.5,) * shape[0], (0.25,) * shape[0])
    features = lambda x, o, s: cond._features(*cond._sums(x), o, s)     # noqa: E731
    assert executed_flops(features, images, offset, scale) == feature_flops(shape)


def test_the_laplacian_is_the_five_point_stencil_and_costs_five_flops_an_output():
    """The same outputs as a convolution with the 3 x 3 Laplacian kernel, in numpy and in torch
    (the bank's fingerprints), for 4 adds and 1 multiply an output, not the kernel's 9
    multiply-adds: 3 x 32 x 32 has 2,700 outputs."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    by_conv = torch.nn.functional.conv2d(x.reshape(6, 1, 32, 32), LAPLACIAN[None, None]).reshape(2, 3, 30, 30)
    assert torch.allclose(cond.laplacian(x), by_conv) and np.allclose(cond.laplacian(x.numpy()), by_conv.numpy())
    assert executed_flops(cond.laplacian, x[:1]) == 5 * 2700 == cond.laplacian_flops_per_output() * 2700
    # 3 x 32 x 32: the stencil, 3 per pixel and per output, 20 per channel on the sums.
    assert feature_flops([3, 32, 32]) == 5 * 2700 + 3 * (3072 + 2700) + 20 * 3 == 30876


@pytest.mark.parametrize("k, dims, flops", [(3, 9, 567), (1, 3, 27), (4, 1, 20)])
def test_the_flops_of_one_images_distances(k, dims, flops):
    assert distance_flops(k, dims) == flops
    model = ConditionModel(np.zeros(dims), np.eye(dims), 0.0, 1.0)
    assert executed_flops(lambda f: [model.squared_distance(f) for _ in range(k)], np.ones((1, dims))) == flops


@pytest.mark.parametrize("shape", [(3, 2, 32), (1, 32, 2), (1, 1, 1)])
def test_images_too_small_for_the_stencil_are_refused_in_one_line(shape):
    with pytest.raises(InputError, match=r"too small for BatchNorm statistics per condition \(--bn-conditions\)") as e:
        feature_flops(shape)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError):
        pixel_features(torch.zeros(1, *shape, dtype=torch.uint8), (0.5,) * shape[0], (0.25,) * shape[0])


def test_logsumexp_is_exact_and_does_not_overflow():
    a = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    np.testing.assert_allclose(cond._logsumexp(a), np.log(np.exp(a).sum(0)))
    np.testing.assert_allclose(cond._logsumexp(a, 1), np.log(np.exp(a).sum(1)))
    np.testing.assert_allclose(cond._logsumexp(np.array([1000.0, 1000.0])), 1000.0 + math.log(2))


def test_logsumexp_shifts_each_row_by_its_own_largest_value_and_keeps_the_other_axes():
    """Mutants: the shift taken over the whole array (a row 1000 below the largest would be
    log(0)), every axis of length one squeezed instead of the summed one."""
    a = np.array([[0.0, 0.0], [1000.0, 1000.0]])
    np.testing.assert_allclose(cond._logsumexp(a, 1), [math.log(2), 1000.0 + math.log(2)])
    np.testing.assert_allclose(cond._logsumexp(a.T), [math.log(2), 1000.0 + math.log(2)])
    one = cond._logsumexp(np.array([[1.0, 2.0]]), 1)
    assert one.shape == (1,) and one[0] == pytest.approx(math.log(math.e + math.e ** 2))


def reference_fit(f):
    mu = f.mean(0)
    d = f - mu
    cov = d.T @ d / (len(f) - 1)
    cov = cov + 1e-3 * np.trace(cov) / len(mu) * np.eye(len(mu))
    precision = np.linalg.inv(cov)
    reach = max(float(v @ precision @ v) for v in d)
    return mu, precision, math.log(np.linalg.det(cov)), reach


def test_a_condition_is_a_gaussian_with_shrunk_covariance_and_its_own_images_reach():
    """Mutants: the mean, the covariance's shrinkage (SHRINK, the mean variance), the inverse, the
    reach (largest, squared), the log-determinant."""
    g = np.random.default_rng(2)
    f = g.normal(size=(12, 3)) @ np.array([[2.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.2]]) + [1.0, -2.0, 0.5]
    m = ConditionModel.fit(f)
    mu, precision, logdet, reach = reference_fit(f)
    np.testing.assert_allclose(m.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(m.precision, precision, rtol=1e-9)
    assert m.logdet == pytest.approx(logdet, rel=1e-10) and m.reach == pytest.approx(reach, rel=1e-10)
    np.testing.assert_allclose(m.squared_distance(f[:4]), [(v - mu) @ precision @ (v - mu) for v in f[:4]], rtol=1e-10)
    assert isinstance(m.logdet, float) and isinstance(m.reach, float)
    single = ConditionModel.fit(f.astype(np.float32))          # the mean kept in float64 whatever comes in
    assert single.mean.dtype == np.float64
    np.testing.assert_array_equal(single.mean, f.astype(np.float32).astype(np.float64).mean(0))


def test_a_condition_of_one_feature_and_one_of_identical_images():
    """Mutants: atleast_2d dropped (one feature), the 1e-8 floor of the shrinkage (no variance)."""
    m = ConditionModel.fit(np.array([[1.0], [3.0], [2.0]]))
    assert m.precision.shape == (1, 1) and m.precision[0, 0] == pytest.approx(1 / 1.001)
    assert m.reach == pytest.approx(1 / 1.001)
    flat = ConditionModel.fit(np.ones((3, 2)))
    np.testing.assert_allclose(flat.precision, np.eye(2) * 1e11, rtol=1e-9)
    assert flat.logdet == pytest.approx(2 * math.log(1e-11)) and flat.reach == 0.0


def test_a_condition_needs_two_images():
    with pytest.raises(ValueError, match="^a condition needs at least 2 images to describe$"):
        ConditionModel.fit(np.zeros((1, 3)))
    ConditionModel.fit(np.array([[0.0, 1.0], [1.0, 0.0]]))


def model(mean, scale=1.0, logdet=0.0, reach=4.0):
    mean = np.asarray(mean, dtype=np.float64)
    return ConditionModel(mean, np.eye(len(mean)) / scale, logdet, reach)


def test_a_condition_reads_back_what_it_wrote_and_refuses_a_damaged_one():
    m = ConditionModel.fit(np.random.default_rng(3).normal(size=(5, 2)))
    back = ConditionModel.from_dict(m.to_dict())
    assert back.mean.tolist() == m.mean.tolist() and back.precision.tolist() == m.precision.tolist()
    assert (back.logdet, back.reach) == (m.logdet, m.reach)
    assert back.mean.dtype == np.float64 and back.precision.dtype == np.float64
    assert m.to_dict() == {"mean": m.mean.tolist(), "precision": m.precision.tolist(), "logdet": m.logdet,
                           "reach": m.reach}
    good = m.to_dict()
    for bad in [{"mean": [[0.0, 1.0]]}, {"precision": [[1.0, 0.0]]}, {"precision": [[1.0, 0.0, 0.0]] * 2}]:
        with pytest.raises(ValueError, match="^mean and precision disagree in size$"):
            ConditionModel.from_dict({**good, **bad})
    for bad in [{"mean": [math.nan, 0.0]}, {"precision": [[math.inf, 0.0], [0.0, 1.0]]}, {"logdet": math.inf},
                {"reach": math.nan}]:
        with pytest.raises(ValueError, match="^non-finite mean, precision, log-determinant or reach$"):
            ConditionModel.from_dict({**good, **bad})
    assert ConditionModel.from_dict({**good, "logdet": "1.5", "reach": 2}).logdet == 1.5
    whole = ConditionModel.from_dict({"mean": [0, 1], "precision": [[1, 0], [0, 1]], "logdet": 0, "reach": 1})
    assert whole.mean.dtype == np.float64 and whole.precision.dtype == np.float64


def test_a_chooser_needs_one_model_per_condition_and_a_window_of_two_frames():
    with pytest.raises(ValueError, match="^a chooser needs one model per condition$"):
        ConditionChooser([], [])
    with pytest.raises(ValueError, match="^a chooser needs one model per condition$"):
        ConditionChooser(["a", "b"], [model([0.0])])
    with pytest.raises(ValueError, match="^window must be >= 2 frames, got 1$"):
        ConditionChooser(["a"], [model([0.0])], window=1)
    assert ConditionChooser(["a"], [model([0.0])], window=2).window == 2
    assert ConditionChooser(["a"], [model([0.0])]).window == DEFAULT_WINDOW == 1000


def test_a_condition_persists_with_probability_one_less_one_over_the_window():
    three = ConditionChooser(["a", "b", "c"], [model([0.0]), model([1.0]), model([2.0])], window=10)
    np.testing.assert_allclose(three._transition, [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    two = ConditionChooser(["a", "b"], [model([0.0]), model([1.0])], window=10)
    np.testing.assert_allclose(two._transition, [[0.9, 0.1], [0.1, 0.9]])
    one = ConditionChooser(["a"], [model([0.0])], window=10)
    np.testing.assert_array_equal(one._transition, [[1.0]])
    np.testing.assert_allclose(three.belief, [1 / 3] * 3)
    b = three.belief
    b[0] = 5
    np.testing.assert_allclose(three.belief, [1 / 3] * 3)
    assert three.names == ["a", "b", "c"] and len(three.models) == 3


def reference_evidence(models, features):
    """Log-likelihoods relative to the best, floored at -20, and within twice some reach."""
    ll = np.array([[-0.5 * ((f - m.mean) @ m.precision @ (f - m.mean) + m.logdet) for m in models] for f in features])
    d2 = np.array([[(f - m.mean) @ m.precision @ (f - m.mean) for m in models] for f in features])
    ll = np.maximum(ll - ll.max(1, keepdims=True), -20.0)
    return ll, (d2 <= 2.0 * np.array([m.reach for m in models])).any(1)


MODELS = [model([0.0, 0.0], logdet=0.5, reach=3.0), model([3.0, 0.0], 2.0, logdet=1.0, reach=2.0),
          model([0.0, 4.0], 0.5, logdet=-0.3, reach=5.0)]


def test_evidence_is_capped_relative_log_likelihood_and_known_within_twice_the_reach():
    """Mutants: -0.5, the log-determinant's sign, the cap (EVIDENCE_CAP) and its sign, the margin
    (OUTLIER_MARGIN), <= as <, any as all."""
    chooser = ConditionChooser(["src", "b", "c"], MODELS)
    features = np.array([[0.1, 0.2], [2.5, 0.1], [0.0, 3.8], [1.5, 2.0], [30.0, 30.0], [0.0, -2.4], [3.0, 2.0]])
    ll, known = chooser.evidence(features)
    ref_ll, ref_known = reference_evidence(MODELS, features)
    np.testing.assert_allclose(ll, ref_ll, rtol=1e-12)
    assert ll.min() == -EVIDENCE_CAP == -20.0
    assert known.tolist() == ref_known.tolist() == [True, True, True, True, False, True, True]
    assert chooser.evidence(np.array([[0.0, -2.5]]))[1].tolist() == [False]
    alone = ConditionChooser(["src"], [model([0.0, 0.0], reach=2.0)])
    assert alone.evidence(np.array([[2.0, 0.0], [0.0, -2.0001]]))[1].tolist() == [True, False]   # 4 is twice 2


def reference_batch(models, features, steps=10, smoothing=1e-3):
    ll, known = reference_evidence(models, features)
    k = len(models)
    w = np.full(k, 1.0 / k)
    rows = ll[known]
    for _ in range(steps if known.any() else 0):
        post = np.exp(rows + np.log(w))
        post = post / post.sum(1, keepdims=True)
        w = (post.sum(0) + smoothing) / (len(rows) + smoothing * k)
    return [int(np.argmax(ll[i] + np.log(w))) if known[i] else 0 for i in range(len(features))], w


def test_a_batch_takes_its_mixture_by_em_and_each_image_its_most_probable_condition():
    """Mutants: the EM step count, the smoothing, the posterior's normalisation, the weights'
    update, unknown images routed to the source."""
    g = np.random.default_rng(4)
    # mostly condition b, a few ambiguous images between the source and b, and one far away
    features = np.vstack([g.normal([3.0, 0.0], 0.8, size=(20, 2)), g.normal([1.1, 0.0], 0.05, size=(10, 2)),
                          [[40.0, -40.0]]])
    chooser = ConditionChooser(["src", "b", "c"], MODELS)
    expect, weights = reference_batch(MODELS, features)
    got = chooser.choose_batch(features)
    assert got.dtype == torch.int64 and got.tolist() == expect
    uniform = reference_evidence(MODELS, features)[0].argmax(1).tolist()
    assert got.tolist()[20:30] != uniform[20:30]      # the mixture moved the ambiguous ones
    assert got.tolist()[-1] == 0


def test_a_batch_of_images_none_of_which_is_known_goes_to_the_source():
    chooser = ConditionChooser(["src", "b", "c"], MODELS)
    assert chooser.choose_batch(np.array([[50.0, 50.0], [-50.0, 9.0]])).tolist() == [0, 0]


def test_smoothing_keeps_a_condition_no_image_of_the_batch_chose():
    """Mutants: the 1e-3 smoothing of the weights (an emptied condition would be impossible): an
    image of c in a batch of b is still routed to c."""
    chooser = ConditionChooser(["src", "b", "c"], MODELS)
    features = np.vstack([np.tile([3.0, 0.0], (200, 1)), [[0.0, 4.0]]])
    got = chooser.choose_batch(features).tolist()
    assert got == [1] * 200 + [2] == reference_batch(MODELS, features)[0]
    _, w = reference_batch(MODELS, features)
    assert w[0] < 1e-5 and w[0] > 0


def test_the_smoothing_is_a_thousandth_of_an_image():
    """Mutants: the smoothing's size (1e-3 as 1.001): an image nearer c, in a batch of b, goes to b
    with a thousandth and to c with a whole image's worth."""
    chooser = ConditionChooser(["src", "b", "c"], MODELS)
    features = np.vstack([np.tile([3.0, 0.0], (40, 1)), [[0.6, 3.2]]])
    assert chooser.choose_batch(features).tolist() == [1] * 41 == reference_batch(MODELS, features)[0]
    assert reference_batch(MODELS, features, smoothing=1.001)[0][-1] == 2


def reference_stream(models, features, window, belief):
    ll, known = reference_evidence(models, features)
    k = len(models)
    t = np.full((k, k), 1.0 / window / (k - 1))
    np.fill_diagonal(t, 1.0 - 1.0 / window)
    out = []
    for i in range(len(features)):
        belief = belief @ t
        if known[i]:
            belief = belief * np.exp(ll[i])
            belief = belief / belief.sum()
            out.append(int(np.argmax(belief)))
        else:
            out.append(0)
    return out, belief


def test_a_stream_is_filtered_frame_by_frame_and_remembers_between_calls():
    """Mutants: the transition, the evidence's weighting, the normalisation, the argmax, unknown
    frames reported as the source yet kept in the belief, the belief kept for the next call."""
    chooser = ConditionChooser(["src", "b", "c"], MODELS, window=4)
    frames = np.array([[0.1, 0.0], [2.9, 0.1], [3.1, -0.2], [60.0, 60.0], [1.1, 0.0], [0.0, 4.1], [0.2, 3.9]])
    expect, belief = reference_stream(MODELS, frames[:4], 4, np.full(3, 1 / 3))
    got = chooser.choose_stream(frames[:4])
    assert got.dtype == torch.int64 and got.tolist() == expect == [0, 1, 1, 0]
    np.testing.assert_allclose(chooser.belief, belief, rtol=1e-12)
    expect2, belief2 = reference_stream(MODELS, frames[4:], 4, belief)
    assert chooser.choose_stream(frames[4:]).tolist() == expect2
    np.testing.assert_allclose(chooser.belief, belief2, rtol=1e-12)
    assert expect2 != reference_stream(MODELS, frames[4:], 4, np.full(3, 1 / 3))[0]   # memory mattered
    chooser.reset()
    np.testing.assert_allclose(chooser.belief, [1 / 3] * 3)


def test_a_long_window_needs_more_evidence_to_switch():
    """A switch needs about ln W nats: one frame of b after a run of the source switches with W = 4,
    not with W = 10**6."""
    frames = np.vstack([np.tile([0.0, 0.0], (30, 1)), [[3.0, 0.0]]])
    short = ConditionChooser(["src", "b", "c"], MODELS, window=4).choose_stream(frames).tolist()
    long = ConditionChooser(["src", "b", "c"], MODELS, window=10 ** 6).choose_stream(frames).tolist()
    assert short[-1] == 1 and long[-1] == 0
    assert short == reference_stream(MODELS, frames, 4, np.full(3, 1 / 3))[0]


def test_the_belief_never_reaches_zero():
    """Mutants: the 1e-300 floor kept after the stream (a belief of exactly zero could never
    recover)."""
    chooser = ConditionChooser(["src", "b"], [model([0.0], logdet=0.0, reach=1e9), model([1e6], reach=1.0)])
    chooser._belief = np.array([1.0, 0.0])
    chooser._transition = np.eye(2)
    chooser.choose_stream(np.array([[0.0]]))
    assert chooser.belief[1] == 1e-300 and chooser.belief[0] == 1.0


def test_a_chooser_reads_back_what_it_wrote_with_its_window_or_another():
    chooser = ConditionChooser(["src", "b", "c"], MODELS, window=50)
    d = chooser.to_dict()
    assert d["names"] == ["src", "b", "c"] and d["window"] == 50 and d["models"] == [m.to_dict() for m in MODELS]
    assert ConditionChooser.from_dict(d).window == 50
    assert ConditionChooser.from_dict(d, window=7).window == 7
    assert ConditionChooser.from_dict({k: v for k, v in d.items() if k != "window"}).window == 1000
    back = ConditionChooser.from_dict(d)
    frames = np.array([[2.9, 0.1], [0.0, 4.0], [0.3, 0.1]])
    assert back.choose_batch(frames).tolist() == chooser.choose_batch(frames).tolist()


def test_a_chooser_from_kept_images_fits_each_conditions_pixel_features():
    g = torch.Generator().manual_seed(5)
    dark = torch.randint(0, 60, (6, 1, 6, 6), generator=g, dtype=torch.uint8)
    bright = torch.randint(150, 256, (6, 1, 6, 6), generator=g, dtype=torch.uint8)
    chooser = ConditionChooser.from_images(["dark", "bright"], [dark, bright], [0.5], [0.25], window=9)
    assert chooser.names == ["dark", "bright"] and chooser.window == 9
    for m, images in zip(chooser.models, (dark, bright)):
        ref = ConditionModel.fit(pixel_features(images, [0.5], [0.25]))
        np.testing.assert_allclose(m.mean, ref.mean)
        np.testing.assert_allclose(m.precision, ref.precision)
    assert ConditionChooser.from_images(["d"], [dark], [0.5], [0.25]).window == 1000
    assert chooser.choose_batch(pixel_features(torch.cat([bright[:2], dark[:1]]), [0.5], [0.25])).tolist() == [1, 1, 0]
