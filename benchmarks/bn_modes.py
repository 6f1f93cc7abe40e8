"""How far a pretrained model's training-mode forward is from its evaluation-mode forward on a
dataset: BatchNorm with the batch's statistics against the running statistics the weights carry.

A head fitted on evaluation-mode features (a linear probe) meets training-mode features as soon as
the backbone trains; where the two forwards disagree, fine-tuning starts from a head that no longer
fits. Prints the top-1 agreement of the two forwards, then the BatchNorm layers that alone in
training mode (every other layer evaluating, running statistics left as they are) move the most
predictions, with how far the batch's statistics are from the running ones there.

    python benchmarks/bn_modes.py --dataset folder:../shared/data/cifar10-jpeg --image-size 224 --images 64
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from edge_sel.data import load_source
from edge_sel.models import build_model
from edge_sel.models.pretrained import imagenet_weights, weights_config


def batch_inputs(dataset: str, size: int, count: int, seed: int) -> torch.Tensor:
    train, _ = load_source(dataset, None)
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:count]
    x = F.interpolate(train.images[pick].float() / 255, size=(size, size), mode="bilinear", antialias=True)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=64, help="one batch of this many images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=6, help="layers to list")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = weights_config(args.model)
    state, _ = imagenet_weights(args.model)
    model = build_model(args.model, state["classifier.weight"].shape[0])
    model.load_state_dict(state)
    model.eval()
    mean = torch.tensor(config.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.std).view(1, -1, 1, 1)
    x = (batch_inputs(args.dataset, args.image_size, args.images, args.seed) - mean) / std
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: inputs.__setitem__(n, inp[0].detach()))
             for n, m in norms]
    momenta = {n: m.momentum for n, m in norms}
    with torch.no_grad():
        evaluated = model(x).argmax(1)
        for hook in hooks:
            hook.remove()
        for _, m in norms:
            m.momentum = 0.0            # the running statistics stay the weights' own
        model.train()
        trained = model(x).argmax(1)
        model.eval()
        alone = []
        for n, m in norms:
            m.train()
            alone.append(((model(x).argmax(1) == evaluated).float().mean().item(), n, m))
            m.eval()
    for n, m in norms:
        m.momentum = momenta[n]
    print(f"{args.model} at {args.image_size} px, {args.images} images of {args.dataset}: top-1 of the "
          f"training-mode forward agrees with the evaluation-mode forward on "
          f"{(trained == evaluated).float().mean().item():.1%}")
    print(f"{len(norms)} BatchNorm layers; those that alone in training mode move the most predictions:")
    for agree, n, m in sorted(alone)[:args.show]:
        values = inputs[n].transpose(0, 1).flatten(1)
        ratio = (values.var(1) + m.eps) / (m.running_var + m.eps)
        shift = (values.mean(1) - m.running_mean).abs() / (m.running_var + m.eps).sqrt()
        print(f"  {n:28s} agreement {agree:6.1%}  batch/running variance median {ratio.median().item():.2f} "
              f"(max {ratio.max().item():.2f}), mean shift median {shift.median().item():.2f} sd "
              f"(max {shift.max().item():.2f})")


if __name__ == "__main__":
    main()
