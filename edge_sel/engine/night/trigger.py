"""The attention trigger: the Sundew gate choosing which frames of a camera's stream a device keeps
(to label later, to transmit, to train on tonight) under a budget of N frames or J joules.

The stream is the training split of the given data (a `--shift frames=F` stream, in the order the
camera sends it). Each frame's significance is the deployed model's predictive entropy divided by
its maximum (labels are not known on the device), from one counted forward pass per frame, or 1 for
every frame (`none`: novelty alone, no forward pass). The Sundew gate with novelty then decides frame
by frame, holding its activation at budget / frames; keeping stops when the budget is full.

A joule budget is for training on the kept frames: joules per counted FLOP are measured over the
trigger's own forward passes (the run's meter, with its source and method), and a kept frame costs
a training step's counted FLOPs (forward and backward). What choosing cost is written beside the
choice: counted FLOPs of the forward passes and of the novelty, and the joules of the whole choosing
window with their source.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

from edge_sel.core.flops import FlopCounter
from edge_sel.data.frames import scene_of, stream_positions
from edge_sel.engine.evaluation.evaluate import predict_dataset
from edge_sel.errors import InputError
from edge_sel.methods.base import RunContext
from edge_sel.methods.select.gating_config import gating_config
from edge_sel.methods.select.novelty import fingerprint_flops, fingerprints
from edge_sel.predict.conditions import feature_flops
from edge_sel.methods.select.sundew import SundewGate

SIGNIFICANCES = ("entropy", "none")
RANDOM_DRAWS = 200


def entropy_significance(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.float(), dim=1)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    return (h / math.log(max(logits.shape[1], 2))).clamp(0, 1)


def random_coverage(scenes: torch.Tensor, size: int, seed: int, draws: int = RANDOM_DRAWS) -> dict:
    """Distinct scenes covered by `size` frames chosen uniformly at random: mean and 2.5-97.5% range."""
    g = torch.Generator().manual_seed(seed)
    covered = torch.tensor([float(torch.unique(scenes[torch.randperm(len(scenes), generator=g)[:size]]).numel())
                            for _ in range(draws)])
    return {"mean": covered.mean().item(), "p2.5": covered.quantile(0.025).item(),
            "p97.5": covered.quantile(0.975).item(), "draws": draws}


def run_trigger(model: torch.nn.Module, mean, std, stream, budget_frames: int | None, budget_j: float | None,
                significance: str, novelty: float, batch_size: int, seed: int, meter, out: Path,
                bank=None) -> dict:
    """`bank`: the BatchNorm statistics the deployed model keeps per condition, attached to `model`
    (engine/evaluation/bn_bank.py attach_saved_bank): the entropy significance is then the deployed model's own."""
    if (budget_frames is None) == (budget_j is None):
        raise InputError("trigger: give one budget, --budget-frames N or --budget-joules J")
    if budget_j is not None and significance == "none":
        raise InputError("--budget-joules: needs --significance entropy (the joules per FLOP are measured "
                         "over its forward passes)")
    n = len(stream)
    order = stream_positions(stream, torch.Generator().manual_seed(seed))
    frames = stream.subset(order)
    flops = FlopCounter(model, stream.input_shape)
    model.eval()
    meter.begin("trigger")
    forward_flops = 0
    if significance == "entropy":
        with torch.inference_mode():
            logits = predict_dataset(lambda x: model(x).float(), frames, mean, std, batch_size)
        full, rest = divmod(n, batch_size)
        forward_flops = full * flops.eval_batch(batch_size) + (flops.eval_batch(rest) if rest else 0)
        if bank is not None:        # the conditions described once, then each frame's features and distances
            forward_flops += (sum(len(c.images) for c in bank.conditions) * feature_flops(stream.input_shape)
                              + bank.take_selected() * bank.choice_flops(stream.input_shape))
        sig = entropy_significance(logits)
    else:
        sig = torch.ones(n)
    train_flops_per_frame = None
    if budget_j is not None:
        probe = meter.end("trigger")
        meter.begin("trigger-rest")
        if not probe.get("energy_j"):
            raise InputError("--budget-joules: the meter gave no joules for the forward passes; use --budget-frames")
        f, b = flops.train_step(batch_size)
        train_flops_per_frame = (f + b) / batch_size
        joules_per_flop = probe["energy_j"] / max(1, forward_flops)
        budget_frames = int(budget_j / (joules_per_flop * train_flops_per_frame))
    if budget_frames < 1:
        raise InputError(f"trigger: the budget affords no frame (budget {budget_j or budget_frames})")
    target = min(1.0, budget_frames / n)
    # No per-window floor: a budget below the default floor (5%) must hold.
    gate = SundewGate(gating_config({"target_activation": target, "novelty": novelty, "min_activation": 0.0}))
    gate.setup(RunContext(frames, frames, model, 1, torch.Generator().manual_seed(seed), torch.device("cpu"),
                          mean, std, batch_size))
    prints = fingerprints(frames.pixels())
    gate.novelty_flops = fingerprint_flops(n, frames.input_shape) if novelty > 0 else 0
    keep, _, _ = gate._gate(sig, target, prints if novelty > 0 else None)
    kept = keep.nonzero().squeeze(1)[:budget_frames]        # the camera stops keeping when the budget is full
    window = meter.end("trigger" if budget_j is None else "trigger-rest")
    energy_j = (window.get("energy_j") or 0.0) + ((probe.get("energy_j") or 0.0) if budget_j is not None else 0.0)

    scenes = scene_of(frames).cpu()
    covered = int(torch.unique(scenes[kept]).numel())
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "kept.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["stream_position", "frame_id", "scene", "significance"])
        for pos in kept.tolist():
            writer.writerow([pos, int(frames.index[pos]), int(scenes[pos]), round(float(sig[pos]), 6)])
    result = {
        "frames_seen": n, "scenes_seen": int(torch.unique(scenes).numel()), "budget_frames": budget_frames,
        "budget_joules": budget_j, "gate_kept": int(keep.sum()), "kept": len(kept), "scenes_covered": covered,
        "random_same_size": random_coverage(scenes, len(kept), seed),
        "significance": significance, "novelty_weight": novelty,
        "cost": {"flops_forward": forward_flops, "flops_novelty": gate.novelty_flops if novelty > 0 else 0,
                 "flops_total": forward_flops + (gate.novelty_flops if novelty > 0 else 0),
                 "energy_j": energy_j, "energy_source": window.get("energy_source"),
                 "energy_method": window.get("energy_method")},
        "train_flops_per_frame": train_flops_per_frame,
        "bn_bank": ({"conditions": [c.name for c in bank.conditions],
                     "note": "the entropy significance normalised each frame with its own condition's statistics"}
                    if bank is not None and significance == "entropy" else
                    {"conditions": None, "note": "no forward pass (--significance none)" if significance == "none"
                     else "the checkpoint keeps no BatchNorm statistics per condition"}),
    }
    (out / "trigger.json").write_text(json.dumps(result, indent=2))
    return result
