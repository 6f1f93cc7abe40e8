"""What a pretrain ships for a device's life (core/source_memory.py), made from its final weights:
anchors drawn from its training split, the diagonal Fisher information, the source model's
accuracy on the guard and replay anchors, and the weights themselves. Its passes are counted
(FLOPs), timed and metered like any other, and reported apart from training."""

from __future__ import annotations

import time
from pathlib import Path

from edge_sel.core.evidence import Allowance, Stopped, packed
from edge_sel.core.source_memory import ANCHORS_FILE, FISHER_FILE, GUARD, REPLAY, SOURCE_FILE, Anchors, \
    draw_anchors, write_source_memory
from edge_sel.engine.evaluation.evaluate import correct, evaluation_flops
from edge_sel.engine.levers.fisher import diagonal_fisher, fisher_positions
from edge_sel.errors import InputError

WHAT = {ANCHORS_FILE: "labelled training images of the source (uint8): replay ones mixed into a fine-tune's batches, "
                      "guard ones held out to measure forgetting",
        FISHER_FILE: "diagonal Fisher information of every trainable parameter at the source weights (fp32)",
        SOURCE_FILE: "the source model's full state dict (what the penalty pulls toward, what a reset restores)"}


def check_memory_options(anchors_per_class: int, fisher_samples: int) -> None:
    """A Fisher of no samples is all zeros: an --ewc penalty built on it would silently do nothing."""
    if anchors_per_class > 0 and fisher_samples == 0:
        raise InputError("--fisher-samples 0: the Fisher information needs at least one sample (a Fisher of zeros "
                         "makes --ewc do nothing); to ship no source memory at all pass --anchors-per-class 0")


def write_pretrain_memory(trainer, out: Path, allowance: Allowance | None = None) -> dict:
    """Draw the anchors, estimate the Fisher and evaluate the final model on the anchors, write the
    three files into `out`; returns the summary's source_memory block, whose `card` entry is the
    model card's section. Deterministic for a seed: the same weights give the same bytes. Where
    `allowance` stops it (a stop signal, the run's budget), nothing is written: a partial Fisher
    information is no Fisher information; the block then says why (`none`) and what it cost."""
    trainer.meter.begin("source-memory")
    t0 = time.perf_counter()
    try:
        return _write(trainer, out, allowance, t0)
    except Stopped as e:
        energy = trainer.meter.end("source-memory")
        return {"none": f"not shipped: stopped by {e}", "flops": 0, "wall_s": time.perf_counter() - t0,
                "energy_j": energy.get("energy_j")}


def _write(trainer, out: Path, allowance: Allowance | None, t0: float) -> dict:
    cfg, train = trainer.config, trainer.train_ds
    if allowance is not None:
        allowance.begin().check()
    positions, roles = draw_anchors(train.labels, train.num_classes, cfg.anchors_per_class, cfg.seed)
    positions = positions.to(train.images.device)
    anchors = Anchors(train.pixels(positions).cpu(), train.labels[positions].cpu(), train.index[positions].cpu(), roles)
    fisher = diagonal_fisher(trainer.model, train, fisher_positions(len(train), cfg.fisher_samples, cfg.seed),
                             trainer.mean, trainer.std, trainer.flops, trainer.memory_format,
                             check=None if allowance is None else allowance.check)
    t_eval = time.perf_counter()
    acc, eval_flops, guard_right = {}, 0, None
    for role, name in ((GUARD, "guard"), (REPLAY, "replay")):
        part = train.subset(positions[roles.to(positions.device) == role])
        right = correct(trainer.eval_sets.logits(trainer.backend.predict, part), part.labels)
        acc[name] = right.float().mean().item() if len(right) else None
        guard_right = packed(right) if role == GUARD else guard_right
        eval_flops += evaluation_flops(trainer.flops, len(part), trainer.eval_batch_size)
    eval_wall = time.perf_counter() - t_eval
    source = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    card = write_source_memory(out, anchors, fisher.fisher, source, {
        # guard_right: the source's right/wrong per guard anchor, so a device that evaluates a draw of
        # them knows the source's accuracy on the same draw (engine/levers/guard_set.py)
        "anchors": {"per_class": cfg.anchors_per_class, "seed": cfg.seed, "guard_acc": acc["guard"],
                    "replay_acc": acc["replay"], "guard_right": guard_right},
        "fisher": {"samples": fisher.samples, "flops": fisher.flops, "wall_s": fisher.wall_s,
                   "method": fisher.method}})
    wall = time.perf_counter() - t0
    energy = trainer.meter.end("source-memory")
    return {"card": card, "files": {name: WHAT[name] for name in WHAT},
            "bytes": sum(card[k]["bytes"] for k in ("anchors", "fisher", "source")),
            "flops": fisher.flops + eval_flops, "flops_fisher": fisher.flops, "flops_eval": eval_flops,
            "eval_wall_s": eval_wall, "wall_s": wall, "energy_j": energy.get("energy_j"),
            "energy_source": energy.get("energy_source"), "energy_method": energy.get("energy_method"),
            "note": ("written after the last epoch from the final weights: Fisher = mean squared per-sample "
                     "gradient (forward + backward of each sample, counted), the anchors evaluated once (counted "
                     "as evaluation); its FLOPs, seconds and joules are in the totals' *_all figures")}


def add_to_totals(summary: dict, block: dict, what: str = "the source memory written for devices (source_memory: "
                                                         "Fisher pass and anchor evaluation)") -> None:
    """Passes a pretrain runs for devices (the source memory's, the set gains') count in the run's
    all-in totals."""
    totals = summary["totals"]
    totals["flops_all"] = (totals.get("flops_all") or 0) + block["flops"]
    totals["wall_all_s"] = (totals.get("wall_all_s") or 0) + block["wall_s"]
    if block.get("energy_j") is not None:      # a pretrain of 0 epochs metered this pass alone
        totals["energy_all_j"] = (totals.get("energy_all_j") or 0) + block["energy_j"]
    summary["totals_note"] = summary.get("totals_note", "") + f"; flops_all, wall_all_s and energy_all_j include {what}"
