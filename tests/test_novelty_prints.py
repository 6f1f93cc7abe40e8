"""Novelty's pieces (edge_sel/methods/select/novelty.py) against numbers worked out another way: a
fingerprint against torch's FFT of the grey image, the FLOPs of a fingerprint as exact counts
(figures the gate charges), the novelty of a cosine, and the memory of kept frames as a ring
buffer. No training and no data set, so these run in milliseconds."""

import math

import numpy as np
import pytest
import torch

from edge_sel.methods.select import novelty as nov
from edge_sel.methods.select.novelty import NoveltyMemory, fingerprint_flops, fingerprints, print_dim, to_novelty

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_prints(images: torch.Tensor, k: int) -> torch.Tensor:
    """log(1 + |DFT|) of the grey image at rows 0..K-1 and H-K..H-1, columns 0..K-1, centred and
    of unit length."""
    grey = images.to(torch.float64).mean(1) / 255
    spectrum = torch.fft.fft2(grey).abs()
    h = grey.shape[-2]
    rows = list(range(k)) + list(range(h - k, h))
    f = torch.log1p(spectrum[:, rows][:, :, :k]).flatten(1)
    f = f - f.mean(1, keepdim=True)
    return f / f.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("shape, k", [((3, 16, 12), 4), ((1, 6, 8), 3), ((2, 9, 2), 2), ((1, 2, 5), 1)])
def test_a_fingerprint_is_the_centred_unit_log_magnitude_of_the_lowest_frequencies(shape, k):
    """Mutants: the grey mean and its scale, the tables (rows, columns, 2 pi, cos and sin), the
    real and imaginary parts, log1p, the centring and the length."""
    g = torch.Generator().manual_seed(sum(shape))
    images = torch.randint(0, 256, (3, *shape), generator=g, dtype=torch.uint8)
    got = fingerprints(images)
    assert got.shape == (3, 2 * k * k) and got.dtype == torch.float32
    assert nov._k(list(shape)) == k and print_dim(list(shape)) == 2 * k * k
    torch.testing.assert_close(got.double(), reference_prints(images, k), rtol=0, atol=2e-5)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)


def test_a_moved_frame_keeps_its_print_and_a_flat_one_has_no_direction():
    """A circular shift keeps every magnitude; a black frame's print is all zero (the 1e-6
    floor of the length, not a division by zero)."""
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (1, 3, 16, 16), generator=g, dtype=torch.uint8)
    moved = torch.roll(image, shifts=(3, 5), dims=(2, 3))
    torch.testing.assert_close(fingerprints(moved), fingerprints(image), rtol=0, atol=2e-5)
    flat = fingerprints(torch.zeros((2, 1, 8, 8), dtype=torch.uint8))
    assert flat.tolist() == [[0.0] * 32] * 2
    assert fingerprints(image.double().to(torch.uint8)).dtype == torch.float32


@pytest.mark.parametrize("n, shape, flops", [(5, [3, 32, 32], 5 * 44416), (1, [1, 8, 3], 1248), (2, [1, 2, 1], 2 * 58)])
def test_the_flops_of_a_fingerprint_are_exact_counts(n, shape, flops):
    """Per image: C H W for the grey mean, two 2K x H by H x W products, four 2K x W by W x K, then
    12 per print value (two sums, magnitude, log, centring, length)."""
    assert fingerprint_flops(n, shape) == flops


def test_novelty_is_one_less_the_cosine_over_the_radius_clipped():
    sim = np.array([1.0, 0.95, 0.92, 0.5, -1.0, 1.05])
    np.testing.assert_allclose(to_novelty(sim), [0.0, 0.5, 0.8, 1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(to_novelty(sim, radius=0.2), [0.0, 0.25, 0.4, 1.0, 1.0, 0.0], atol=1e-12)
    torch.testing.assert_close(to_novelty(torch.tensor([0.97, 1.0])), torch.tensor([0.3, 0.0]))
    assert nov.RADIUS == 0.1 and nov.FREQUENCIES == 4


def test_the_memory_is_empty_then_holds_the_last_frames_kept():
    """Mutants: the -1 of an empty memory and its zero cost, the ring's index, the count, the
    FLOPs of the comparisons (two per multiply-add)."""
    memory = NoveltyMemory(3, size=2)
    assert memory.bank.shape == (2, 3) and memory.count == 0 and memory.filled == 0
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    near, flops = memory.nearest(queries)
    assert near.tolist() == [-1.0, -1.0] and flops == 0
    memory.remember(torch.tensor([[0.0, 1.0, 0.0]]))
    assert memory.count == 1 and memory.filled == 1
    near, flops = memory.nearest(queries)
    torch.testing.assert_close(near, torch.tensor([0.0, 0.6])) and None
    assert flops == 2 * 2 * 1 * 3
    memory.remember(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))      # the first one is overwritten
    assert memory.count == 3 and memory.filled == 2
    assert memory.bank.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    near, flops = memory.nearest(queries)
    torch.testing.assert_close(near, torch.tensor([1.0, 0.8]))
    assert flops == 2 * 2 * 2 * 3
    memory.remember(torch.eye(3))                           # more than it holds: the last two
    assert memory.count == 5 and memory.bank.tolist() == [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert NoveltyMemory(4).bank.shape == (512, 4)


def test_the_memory_is_saved_and_restored_as_a_copy():
    memory = NoveltyMemory(2, size=3)
    memory.remember(torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    state = memory.state_dict()
    assert state["count"].item() == 2 and torch.equal(state["bank"], memory.bank)
    memory.bank[0, 0] = 5.0
    assert state["bank"][0, 0].item() == pytest.approx(0.6)
    other = NoveltyMemory(2, size=3)
    other.load_state_dict({"bank": state["bank"].double(), "count": torch.tensor(2)})
    assert other.count == 2 and isinstance(other.count, int) and other.bank.dtype == torch.float32
    state["bank"][1, 1] = 7.0
    assert other.bank[1, 1].item() == 0.0
    near, _ = other.nearest(torch.tensor([[1.0, 0.0]]))
    assert near.item() == pytest.approx(1.0)
    assert math.isclose(other.bank[0, 0].item(), 0.6, rel_tol=1e-6)


def test_the_transform_tables_are_computed_in_float64_then_rounded():
    """Mutants: the row or column indices made in torch's float32 default (2 pi x 223 loses a
    ten-thousandth of a radian there): the tables must be the float64 angles rounded once."""
    h, w, k = 224, 200, 4
    rows = np.array(list(range(k)) + list(range(h - k, h)), dtype=np.float64)
    a = 2 * np.pi * rows[:, None] * np.arange(h, dtype=np.float64)[None] / h
    b = 2 * np.pi * np.arange(w, dtype=np.float64)[:, None] * np.arange(k, dtype=np.float64)[None] / w
    for got, expect in zip(nov._tables(h, w, k), (np.cos(a), np.sin(a), np.cos(b), np.sin(b))):
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), expect.astype(np.float32), rtol=0, atol=1e-7)
