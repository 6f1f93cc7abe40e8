"""Head first: a pretrain that starts from pretrained weights trains its new classifier alone before
anything else (`--head-epochs N`, `--head-lr`), the way a transfer from ImageNet is usually begun.

The head stage is a linear probe: every tensor but the classifier's has requires_grad=False, so no
backbone gradient is computed (its counted backward FLOPs are the classifier's), and BatchNorm runs
in eval mode, so the running statistics stay the pretrained ones. Training everything from a random
head moves the backbone by the head's noise first; on 2,000 CIFAR-10 images at 96 px a try that did
(reference/transfer-anchors.md) ended below the probe alone. Its epochs are records of their own
(`"stage": "head"`), with counted FLOPs, joules and wall time like any epoch; the rest of the run's
records say `"stage": "fine-tune"` and the summary's totals hold both.

`--bn-momentum` sets every BatchNorm layer's momentum for the fine-tuning stage: weights converted
from TensorFlow carry its 0.99 decay (momentum 0.01), which keeps ImageNet's statistics for hundreds
of steps after the weights have moved away from them, so evaluation normalises with statistics the
weights no longer match. A pretrain from pretrained weights takes 0.1 unless told otherwise.
`--backbone-lr-scale` trains the backbone at a fraction of the head's rate in that stage.

`--head-bn-adapt N` re-estimates the BatchNorm statistics on N training images before the head stage
(counted forward passes, in its first record), so the probe learns on features normalised as the
fine-tuning stage's train-mode BatchNorm will normalise them (with the data's statistics, not
ImageNet's). EfficientNet-Lite0 at 96 px on 2,000 CIFAR-10 images: after a 66.3% probe on ImageNet's
statistics, one epoch of everything (lr 0.003, backbone at 0.1 of it) ended at 43.0% (300 test images).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from edge_sel.config import TrainConfig
from edge_sel.core.records import read_records
from edge_sel.methods.update.fixed_sets import classifier_names

HEAD, FINE_TUNE = "head", "fine-tune"
# BatchNorm momentum of a pretrain from pretrained weights when --bn-momentum is not given: torch's own.
PRETRAINED_BN_MOMENTUM = 0.1


def head_config(cfg: TrainConfig) -> TrainConfig:
    """The head stage's options: the classifier alone, BatchNorm statistics frozen (re-estimated on
    --head-bn-adapt training images first, where given), at --head-lr, dense, no memory budget; the
    rest (batch size, optimizer, augmentation, precision) as the run's."""
    return dataclasses.replace(cfg, epochs=cfg.head_epochs, lr=cfg.head_lr or cfg.lr, sparsity="classifier",
                               bn_mode="eval", strategy="dense", method={}, warmup_epochs=0.0,
                               bn_adapt=cfg.head_bn_adapt, bn_anchor_share=0.0,
                               memory_budget_mb=None, memory_plan=None, checkpoint_every=0, head_epochs=0,
                               explicit=None)


def set_bn_momentum(model: nn.Module, momentum: float | None) -> int:
    """Every BatchNorm layer's momentum (None: left as built); how many layers were set."""
    if momentum is None:
        return 0
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.momentum = momentum
    return len(layers)


def unfreeze(model: nn.Module) -> None:
    """Every parameter trainable again: the fine-tuning stage's updater chooses from all of them."""
    for p in model.parameters():
        p.requires_grad_(True)


def scale_backbone_lr(optimizer, model: nn.Module, scale: float) -> None:
    """The fine-tuning stage's backbone at `scale` times the learning rate, the classifier at it: a
    second parameter group (the backend multiplies each group's rate by its lr_scale), made before any
    step, so no optimizer state is split; a resume makes it again before loading its state."""
    if scale == 1.0:
        return
    head = {id(p) for n, p in model.named_parameters() if n in classifier_names(model)}
    group = optimizer.param_groups[0]
    everything = group["params"]
    group["params"] = [p for p in everything if id(p) in head]
    optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "lr_scale": scale,
                               "params": [p for p in everything if id(p) not in head]})


def earlier_head_records(out) -> list[dict]:
    """A resumed run's head-stage records (its state holds only the fine-tuning stage's)."""
    path = out / "metrics.jsonl"
    return [r for r in read_records(path) if r.get("stage") == HEAD] if path.exists() else []


class StageWriter:
    """Writes one stage's records after the stages before it: each record says its stage, and a
    rewrite of the stage's records (the end of a run's test) keeps the earlier stages' in front."""

    def __init__(self, writer, stage: str, before: list[dict] = ()):
        self.writer, self.stage, self.before = writer, stage, list(before)

    def append(self, record: dict) -> None:
        record["stage"] = self.stage
        self.writer.append(record)

    def reset(self, records: list[dict]) -> None:
        for r in records:
            if r.get("phase") != "baseline":
                r.setdefault("stage", self.stage)
        self.writer.reset(self.before + list(records))
