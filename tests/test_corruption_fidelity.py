"""The CIFAR-10-C corruptions against the reference generation code's figures: every corruption's
mean PSNR on the reference's 500 CIFAR-10 test images at severities 1, 3 and 5, and the texture of
fog's cloud (which PSNR barely sees)."""

import sys
from pathlib import Path

import pytest
import torch

from conftest import CIFAR_JPEG, needs_cifar
from edge_sel.data.corruptions import SEVERITY, plasma, sample_generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from corruption_fidelity import REFERENCE, SEVERITIES, measure, reference_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
# Each image's draw is random here: the reference's figure is itself the mean of 500 draws, so two
# such means differ by chance as well as by definition.
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "fog"}


@pytest.fixture(scope="module")
def clean():
    return reference_images(CIFAR_JPEG)


@needs_cifar()
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_mean_psnr_matches_the_reference_within_a_tenth_of_a_db(clean, name):
    for severity, ours, theirs in zip(SEVERITIES, measure(clean, name), REFERENCE[name]):
        allowed = 0.1
        if name in RANDOM:
            # Plus three standard errors of the difference of two 500-draw means (the spread of one
            # image's PSNR over draws is about the spread over images seen here).
            allowed += 3 * (2 * ours.var() / len(ours)).sqrt().item()
        assert abs(ours.mean().item() - theirs) <= allowed, (name, severity, ours.mean().item(), theirs, allowed)


@pytest.mark.parametrize(("severity", "reference"), [(1, 0.0202), (5, 0.0287)])
def test_the_fog_cloud_is_as_rough_as_the_references(severity, reference):
    """Mean absolute difference between horizontal neighbours of a 32 x 32 cloud, over 200 clouds
    (standard error about 2%). A 64 x 64 cloud cropped, or noise shrinking by decay rather than
    decay**2 per level, gives 0.0142 and 0.0381."""
    decay = SEVERITY["fog"][severity - 1][1]
    clouds = plasma(32, decay, [sample_generator(0, i, "fog", severity) for i in range(200)])
    roughness = clouds.diff(dim=2).abs().mean().item()
    assert roughness == pytest.approx(reference, rel=0.06)
