"""Lottery Ticket (one-shot, with rewinding), as the SEL benchmark ran it:
train densely, prune 80% of all parameter entries by global magnitude, rewind the surviving
entries to their values at the start of training, retrain with the mask held fixed.

The mask is applied after backward and after each step, so the kernels stay dense: masked dense
convolutions save no FLOPs on dense hardware. Records therefore carry the mask as *update*
sparsity, and the engine keeps counting dense FLOPs for both phases.

`prune_and_rewind` writes the rewound checkpoint plus `lottery_mask.safetensors`; the `lottery`
updater (method option `lottery_mask`: that file) keeps pruned entries at zero while retraining.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from edge_sel.core.checkpoint import save_checkpoint, write_safetensors
from edge_sel.errors import InputError
from edge_sel.methods.base import Updater
from edge_sel.methods.registry import UPDATERS
from edge_sel.models import load_checkpoint

MASK_FILE = "lottery_mask.safetensors"


def global_magnitude_mask(model: torch.nn.Module, prune_frac: float) -> dict[str, torch.Tensor]:
    """Keep |w| > the prune_frac quantile of |w| over every parameter entry (the seed: all
    parameters, BatchNorm scales and biases included), one threshold for the whole model."""
    if not 0 <= prune_frac < 1:
        raise InputError(f"lottery prune fraction must be in [0, 1), got {prune_frac}")
    params = dict(model.named_parameters())
    magnitudes = torch.cat([p.detach().abs().flatten().float() for p in params.values()])
    k = int(prune_frac * magnitudes.numel())          # entries at or below the k-th smallest are pruned
    # A sort, not kthvalue: selection can degrade badly on the many ties of small weights.
    threshold = magnitudes.sort().values[k - 1].item() if k > 0 else -1.0
    return {name: (p.detach().abs() > threshold) for name, p in params.items()}


def prune_and_rewind(trained_dir: Path, initial_dir: Path, out_dir: Path, prune_frac: float = 0.8) -> dict:
    """Mask from the trained weights, values (and BatchNorm statistics) from the initial ones."""
    trained, _ = load_checkpoint(Path(trained_dir))
    initial, card = load_checkpoint(Path(initial_dir))
    mask = global_magnitude_mask(trained, prune_frac)
    with torch.no_grad():
        for name, p in initial.named_parameters():
            p.mul_(mask[name])
    card.training = {**card.training, "lottery": {"pruned_from": str(trained_dir), "rewound_to": str(initial_dir),
                                                  "prune_frac": prune_frac}}
    out_dir = Path(out_dir)
    save_checkpoint(out_dir, initial, card)
    write_safetensors(out_dir / MASK_FILE, {k: v.to(torch.uint8).contiguous() for k, v in mask.items()})
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    info = {"kept": kept, "total": total, "pruned_frac": 1 - kept / total, "mask": str(out_dir / MASK_FILE)}
    (out_dir / "lottery.json").write_text(json.dumps(info, indent=2))
    return info


class LotteryMask(Updater):
    """Pruned entries get no gradient and are put back to zero after every step."""
    name = "lottery"
    saves_compute = False

    def __init__(self, mask_path: str | None):
        if not mask_path:
            raise InputError("--sparsity lottery: needs the mask written by prune_and_rewind "
                             "(method option lottery_mask)")
        path = Path(mask_path)
        if not path.is_file():
            raise InputError(f"--sparsity lottery: mask file {path} not found")
        self.mask_path = path

    def attach(self, model, optimizer, ctx) -> None:
        super().attach(model, optimizer, ctx)
        saved = load_file(str(self.mask_path))
        self.masks = []
        for name, p in model.named_parameters():
            if name not in saved or saved[name].shape != p.shape:
                raise InputError(f"{self.mask_path}: no mask of shape {tuple(p.shape)} for parameter {name}")
            self.masks.append((p, saved[name].to(device=p.device, dtype=p.dtype)))
        total = sum(m.numel() for _, m in self.masks)
        self.pruned_frac = 1 - sum(float(m.sum()) for _, m in self.masks) / total
        self._apply_to_weights()

    @torch.no_grad()
    def _apply_to_weights(self) -> None:
        for p, m in self.masks:
            p.mul_(m)

    def after_backward(self, step: int) -> None:
        for p, m in self.masks:
            if p.grad is not None:
                p.grad.mul_(m)

    def after_step(self, step: int) -> None:
        self._apply_to_weights()        # weight decay and momentum must not revive pruned entries

    def end_epoch(self) -> dict:
        return {"grad_sparsity": self.pruned_frac, "pruned_frac": self.pruned_frac, "sparsity_kind": "update",
                "compute_saved_by_sparsity": False}


def register() -> None:
    """Adds the `lottery` updater (used by the reference benchmark; needs method option lottery_mask)."""
    UPDATERS.setdefault("lottery", lambda method: LotteryMask(method.get("lottery_mask")))
