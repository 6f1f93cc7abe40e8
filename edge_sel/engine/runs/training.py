"""Train a built model on prepared splits into a run directory: what pretrain, finetune, resume and
a fleet client's round share once their inputs are checked."""

from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from pathlib import Path

from edge_sel import huge_pages, threads
from edge_sel.config import TrainConfig
from edge_sel.core import bn_stats
from edge_sel.core.checkpoint import ModelCard, atomic_write_bytes, save_checkpoint
from edge_sel.core.evidence import Allowance
from edge_sel.core.records import RecordWriter
from edge_sel.data import Splits
from edge_sel.device_caps import gpu_uuids
from edge_sel.engine import faults
from edge_sel.engine.evaluation.bn_bank import write_bank_for
from edge_sel.engine.evaluation.keep import load_kept
from edge_sel.engine.levers.anchors import Memory, carry_memory
from edge_sel.engine.levers.source_pass import add_to_totals, write_pretrain_memory
from edge_sel.engine.loop import epoch_record, set_gains
from edge_sel.engine.loop.trainer import Trainer
from edge_sel.engine.machine import probe_cache
from edge_sel.engine.machine.device import pick_device, seed_everything
from edge_sel.engine.machine.distributed import detect_world
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.runs.ddp import RankSync, launch_info
from edge_sel.engine.runs.head_first import (FINE_TUNE, HEAD, StageWriter, earlier_head_records, head_config,
                                             scale_backbone_lr, set_bn_momentum, unfreeze)
from edge_sel.core.outputs import release_claim, start_out_dir
from edge_sel.engine.runs.out_dir import write_config
from edge_sel.engine.runs.signals import StopSignals
from edge_sel.engine.runs.summary import summarize
from edge_sel.errors import writing
from edge_sel.methods import make_strategy, make_updater
from edge_sel.models import count_parameters
from edge_sel.models.input_size import input_sizes
from edge_sel.version import __version__


def said(trainer, what: str) -> None:
    """A line before a pretrain's shipping work, which runs a while after the last epoch."""
    if not trainer.quiet:
        print(f"edge-sel: shipping with the checkpoint: {what}", file=sys.stderr, flush=True)


def train_model(phase: str, model, card: ModelCard, splits: Splits, cfg: TrainConfig, out: Path,
                quiet: bool, energy: EnergyOptions | None, source_info: dict, meter=None,
                resume_state: dict | None = None, memory: Memory | None = None, bank: tuple = (None, None)) -> dict:
    """Train a built model on prepared splits into the run directory `out` (config, records,
    summary, output model, state) and return the summary: what pretrain, finetune and resume do
    once they have checked their inputs, and what a fleet client runs each round. A stop signal
    is deferred from the trainer's start until the summary is written (engine/runs/signals.py).
    `memory`: the starting checkpoint's source memory (engine/levers/anchors.py), carried into `out`.
    `bank`: the run's BatchNorm statistics per condition and what matching tonight cost
    (engine/evaluation/bn_bank.py), written beside the output model."""
    with StopSignals() as signals:
        try:
            return _train_model(phase, model, card, splits, cfg, out, quiet, energy, source_info, meter,
                                resume_state, signals, memory, bank)
        except BaseException:
            release_claim(out)      # no longer written: a resume may take it (a process's end would do the same)
            raise


def recipes_allowance(trainer, records: list[dict], shipped: dict | None, steps_given: bool):
    """What a pretrain's recipes may spend (engine/loop/set_gains.py): by default what the rest of the
    pretrain spent (its epochs' training and evaluation, its anchors and Fisher information), and the
    joules a FLOP cost there (to size the search before it starts); nothing of their own where the
    user gave --set-gains-steps or the server is a GPU (the whole grid). Returns (allowance, joules a
    FLOP or None, whether the whole grid runs)."""
    blocks = [*records, *([shipped] if shipped else [])]
    joules = sum((r.get("energy_j") or 0.0) + (r.get("eval_energy_j") or 0.0) for r in blocks)
    flops = sum((r.get("flops_train") or 0) + (r.get("flops_eval") or 0) + (r.get("flops") or 0) for r in blocks)
    whole_grid = trainer.device.type == "cuda"
    if steps_given or whole_grid:
        return Allowance.of_run(trainer), None, whole_grid
    if joules > 0:
        return Allowance.of_run(trainer, joules=joules), (joules / flops if flops else None), False
    seconds = sum((r.get("wall_s") or 0.0) + (r.get("eval_wall_s") or 0.0) for r in blocks)
    return Allowance.of_run(trainer, seconds=seconds or None), None, False


def inherited(gains: dict | None) -> dict | None:
    """The recipes a fine-tune's output card keeps: the warmup's, marked as measured on its weights."""
    if not gains:
        return None
    return {**gains, "measured_on": gains.get("measured_on", "the warmup's weights (the server's recipes)")}


def head_made_anew(training: dict) -> bool:
    """Whether the weights a card's training started from had no classifier for its classes (made
    anew over published weights, or a random model's)."""
    started = {k: training.get(k) for k in ("pretrained", "init_weights") if training.get(k)}
    return not started or any(v.get("made_anew") for v in started.values())


def untrained_head(training: dict) -> bool:
    """A checkpoint whose classifier no epoch trained: a pretrain of no epoch over a head made anew."""
    return (training.get("phase") == "pretrain" and not training.get("epochs") and not training.get("head_epochs")
            and head_made_anew(training))


def flag_random_head(shipped: dict, card: ModelCard, cfg: TrainConfig) -> None:
    """Guard anchors scored by a classifier no epoch trained (made anew, or a random model's): their
    source accuracy is chance, so the guard and forgetting measured against it mean nothing. Said
    in one line and recorded with the anchors."""
    if cfg.epochs or cfg.head_epochs or not head_made_anew(card.training):
        return
    anchors = shipped["card"]["anchors"]
    anchors["random_head"] = True
    acc = anchors.get("guard_acc")
    warnings.warn(f"--epochs 0: the classifier was never trained, so the guard anchors' source accuracy "
                  f"({'-' if acc is None else f'{100 * acc:.1f}%'}) is a random head's and the guard and forgetting "
                  f"measured against it mean nothing; train at least one epoch before devices use this checkpoint")


def _train_model(phase, model, card, splits, cfg, out, quiet, energy, source_info, meter, resume_state,
                 signals: StopSignals, memory: Memory | None = None, bank: tuple = (None, None)) -> dict:
    world = detect_world()
    ranks = None
    if world.distributed:       # under torchrun (pretrain only): see engine.ddp
        RankSync.refuse_unsupported(cfg, energy, resume_state)
        ranks = RankSync.join(world, cfg.device)
        ranks.resumed_from_epoch = None if resume_state is None else resume_state["next_epoch"]
        source_info = {**source_info, "torchrun": launch_info(world)}
    device = ranks.device if ranks else pick_device(cfg.device)
    generator = seed_everything(cfg.seed)
    strategy = make_strategy(cfg.strategy, cfg.method)
    if ranks:
        strategy = ranks.shard(strategy, cfg.seed)
    updater = make_updater(cfg.sparsity, cfg.method)
    energy = (energy or EnergyOptions()).validate()
    own_meter = meter is None
    # A bad meter name fails before --out is touched; NVML reads the training GPU only.
    if own_meter:
        meter = ranks.open_meter(energy, gpu_uuids(device)) if ranks else energy.open(gpu_uuids(device))
    writes = world.is_main      # under torchrun only rank 0 writes the run directory
    try:
        guard = None
        if energy.max_temp_c is not None:
            from edge_sel.energy import ThermalGuard
            guard = ThermalGuard(meter, energy.max_temp_c, energy.hysteresis_c, max_pause_s=energy.max_pause_s)
        # Building the trainer validates what needs the data and the model (ORT artifacts, class
        # focus, lottery masks, ...): all of it before an existing --out is replaced.
        def build(c=cfg, s=strategy, u=updater, budget_j=energy.budget_j, states=True) -> Trainer:
            return Trainer(c, splits, model, card.mean, card.std, device, generator, s, u,
                           phase=phase, meter=meter, guard=guard, budget_j=budget_j, quiet=quiet,
                           state_dir=out / "state" if writes and states else None,
                           # a mid-epoch state would hold rank 0's share of the epoch only
                           checkpoint_every=0 if ranks else c.checkpoint_every, ranks=ranks, memory=memory,
                           bank=bank[0], bank_setup=bank[1], set_gains=card.set_gains if phase == "finetune" else None,
                           pretrained_start=bool(card.training.get("pretrained")),
                           untrained_head=phase == "finetune" and untrained_head(card.training))
        t0 = time.perf_counter()        # from the trainer's start: its layout probes and memory plan are the run's too
        set_bn_momentum(model, cfg.bn_momentum)     # BatchNorm runs in eval mode in a head stage
        # --head-epochs: the classifier alone first (head_first.py); the head stage keeps no state, so a
        # run stopped in it starts again, and the fine-tuning stage's trainer is built once it is done.
        staged = phase == "pretrain" and cfg.head_epochs > 0
        head = build(head_config(cfg), make_strategy("dense", {}), make_updater("classifier", {}), states=False) \
            if staged and resume_state is None else None
        trainer = head or (ranks.build_trainer(build, cfg) if ranks else build())
        # The run's statistics lever as it runs (a memory plan's frozen statistics; ORT: the artifacts'); a
        # head stage's frozen statistics are its own records', the run's are the fine-tuning stage's.
        if staged:
            mode = bn_stats.mode_of(cfg.bn_mode, cfg.bn_conditions)
            bn_run = bn_stats.fields(mode, bn_stats.momentum_of(model, mode, cfg.bn_momentum))
        else:
            bn_run = epoch_record.bn_fields(trainer)
        if resume_state is None and writes:
            start_out_dir(out, phase)
            if memory is not None:      # the output model, once deployed, keeps where it came from
                carry_memory(memory.directory, out)
            write_config(out, {"phase": phase, **cfg.to_json(), **bn_run, "energy": energy.to_json(), "threads": threads.describe(),
                               "huge_pages": huge_pages.describe(), **source_info})
        writer = RecordWriter(out) if writes else None
        before = earlier_head_records(out) if staged and resume_state is not None and writes else []
        if resume_state is not None and writes:     # drops a record written after the checkpoint
            baseline = resume_state.get("baseline")
            writer.reset(before + ([baseline] if baseline else []) + resume_state["records"])
        # Under torchrun a signal ends the worker at once: torchrun restarts every rank from the
        # last epoch checkpoint, which a rank stopping alone mid-epoch would only delay.
        if head is not None:
            signals.attach(head)
            before = head.run(StageWriter(writer, HEAD) if writer is not None else None)
            if head.stop_reason is None:        # else the run ends in its head stage (stopped, or its budget spent)
                unfreeze(model)
                spent = sum((r.get("energy_j") or 0) + (r.get("eval_energy_j") or 0) for r in before)
                trainer = build(budget_j=None if energy.budget_j is None else max(0.0, energy.budget_j - spent))
                trainer.budget.started_s = head.budget.started_s    # the head stage's seconds are the run's
        if trainer is not head:
            if not ranks:
                signals.attach(trainer)
            if staged:
                scale_backbone_lr(trainer.optimizer, model, cfg.backbone_lr_scale)
            staged_writer = StageWriter(writer, FINE_TUNE, before) if staged and writer is not None else writer
            records = before + [r | {"stage": FINE_TUNE} if staged else r
                                for r in trainer.run(staged_writer, resume=resume_state)]
        else:
            records = before
        shipped, gains = None, None
        # Rank 0 alone, from the final weights (a pretrain keeps its last epoch's), in the meter's window;
        # each bounded like an epoch: a stop signal or --energy-budget stops it at once.
        if phase == "pretrain" and writes and cfg.anchors_per_class > 0 and trainer.stop_reason != "interrupted":
            said(trainer, "anchors, Fisher information and source weights for devices' guards and levers "
                          "(--anchors-per-class 0: none)")
            shipped = write_pretrain_memory(trainer, out, Allowance.of_run(trainer))
            if "none" in shipped:
                said(trainer, f"no anchors or Fisher information: {shipped['none']}")
            else:
                flag_random_head(shipped, card, cfg)
                card.source_memory = shipped["card"]
        measures = cfg.set_gains_steps > 0 or (cfg.set_gains_steps < 0 and not ranks)     # sized: not under torchrun
        if phase == "pretrain" and writes and measures and trainer.stop_reason != "interrupted":
            steps = set_gains.steps_for(cfg.set_gains_steps, len(splits.train), cfg.batch_size)
            allowance, rate, whole_grid = recipes_allowance(trainer, records, shipped, cfg.set_gains_steps > 0)
            if len(trainer.val_ds) >= set_gains.MIN_HELD_OUT:      # else its first lines said why none
                said(trainer, f"each set's held-out accuracy at its recipes over up to {steps} steps, for a device's "
                              f"own choice, within {set_gains.allowance_words(allowance)} (--set-gains-steps 0: none)")
            gains = set_gains.measure(trainer, steps, allowance, halving=not whole_grid, joules_per_flop=rate)
            if "none" in gains:
                said(trainer, f"no recipes: {gains['none']}")
            elif "partial" in gains:
                said(trainer, f"recipes partial ({gains['partial']}): shipped up to step {gains['steps'][-1]}")
        if phase == "pretrain":
            card.set_gains = gains if gains and "sets" in gains else None
        else:       # measured from the warmup's weights: every night of a device's life chooses by them
            card.set_gains = inherited(card.set_gains)
        meter_info = meter.describe() if hasattr(meter, "describe") else {}
    finally:
        if own_meter:
            meter.close()
    kept_weights = trainer.choice.weights_to_load()
    if kept_weights is not None:       # the output model is the best epoch's (or the starting) weights
        load_kept(model, kept_weights)
        push = getattr(trainer.backend, "load_state_dict", None)   # ort: into the session it exports from
        if push is not None:
            push({})
    interrupted = trainer.stop_reason == "interrupted"
    kept = trainer.choice.describe(interrupted) if phase == "finetune" else None
    finish_run = getattr(trainer.backend, "finish_run", None)   # ort: its checkpoint and model.onnx
    if finish_run is not None:
        finish_run(out)
    # Where the weights started; published weights stay named through every fine-tune (their licence).
    started = {k: card.training[k] for k in ("init_weights", "pretrained")
               if k in card.training and (phase == "pretrain" or k == "pretrained")}
    # What trained: the set (by the run's choice, or the user's --sparsity), its statistics and its rate.
    chosen = cfg.choice or {}
    trained = {"sparsity": cfg.sparsity, **({"set": chosen["set"]} if chosen.get("set") else {}),
               **({k: cfg.method[k] for k in ("last_k",) if k in cfg.method}),
               "bn_statistics": bn_run.get("bn_stats"), "lr": cfg.lr,
               "chosen_by": chosen.get("named_by") or chosen.get("decided_by") or "the user's options"}
    card.training = {**started, "phase": phase, "epochs": len(records), "strategy": cfg.strategy,
                     "trained": trained,
                     "final_val_acc": records[-1]["val_acc"] if records else None,
                     "final_test_acc": records[-1]["test_acc"] if records else None, "seed": cfg.seed, **bn_run,
                     **({"head_epochs": cfg.head_epochs, "bn_momentum": cfg.bn_momentum} if staged else {}),
                     **({"recipe": cfg.recipe} if phase == "pretrain" else {}),
                     "input_sizes": input_sizes(model, card)}
    if kept is not None:
        card.training.update({k: kept[k] for k in ("kept", "rule", "kept_epoch", "kept_val_acc", "kept_test_acc",
                                                   "baseline_val_acc")})
    if not writes:
        ranks.finish(trainer)
        return {"run_dir": str(out), "rank": world.rank, "epochs_run": len(records)}
    if phase != "pretrain" and memory is None:
        card.source_memory = None       # the card states files the run directory holds, no others
    # A pretrain stopped before its last epoch is no warmup: writing its weights as a checkpoint
    # would let a fine-tune start from a half-trained model without a word (and without the source
    # memory a finished pretrain ships). Its state is kept for --resume; a checkpoint's files are not.
    unfinished_pretrain = phase == "pretrain" and interrupted
    if unfinished_pretrain:
        for name in ("model.json", "model.safetensors"):
            (out / name).unlink(missing_ok=True)
        bank_written = None
    else:
        save_checkpoint(out, model.cpu(), card)
        bank_written = write_bank_for(trainer.bank, model, out)
    faults.point("model-written")
    # source_info first: a pretrain's names its model by a string, which the card's dict replaces here.
    summary = summarize(records, {
        **source_info, "phase": phase, "edge_sel_version": __version__, "device": str(device),
        "model": {"architecture": card.architecture, "parameters": count_parameters(model)},
        "dataset": card.dataset, "config": {**cfg.to_json(), **bn_run}, **bn_run,
        "total_wall_s": time.perf_counter() - t0, "run_dir": str(out),
        "energy_meter": meter_info, "stop_reason": trainer.stop_reason,
        **({"budget_stop": trainer.budget.stopped} if trainer.budget.stopped else {}),
        **({"stop_signal": signal.Signals(signals.received or signal.SIGINT).name} if interrupted else {}),
        # A stop asked for after the last step (or in a run of no epoch): the run is whole; who started it hears.
        **({"late_stop_signal": signal.Signals(signals.received).name} if signals.received and not interrupted else {}),
        "idle_power_w": getattr(meter, "idle_power_w", None),
        # Measured before the first epoch, outside its time, joules and FLOPs (probe_* say how much).
        "layout": trainer.layout.to_json(), "precision": trainer.precision.to_json(), "sync_every": trainer.sync_every,
        "threads": threads.describe(), "huge_pages": huge_pages.describe(),
        "probe_check": probe_cache.check_choices(trainer.records, cfg.batch_size, trainer.layout, trainer.precision),
        **({"validation_size": trainer.val_size_choice} if trainer.val_size_choice else {}),
        # The guard anchors each validation evaluated, of how many, and the source's accuracy on them.
        **({"guard_anchors": trainer.guard_anchors.describe()} if trainer.guard_anchors is not None else {}),
        **({"world_size": world.size, "distributed": ranks.describe()} if ranks else {}),
    }, baseline=trainer.baseline, kept=kept)
    if unfinished_pretrain:
        summary["output_model"] = None
        summary["epochs_planned"] = cfg.epochs
    if trainer.bank is not None:
        summary["bn_bank"] = {**trainer.bank.describe(), "bytes": bank_written,
                              "written": bank_written is not None}
    if shipped is not None:
        summary["source_memory"] = {k: v for k, v in shipped.items() if k != "card"} | (
            {} if "none" in shipped else {k: shipped["card"][k] for k in ("anchors", "fisher", "source")})
        add_to_totals(summary, shipped)
    if gains is not None:
        summary["set_gains"] = {k: v for k, v in gains.items() if k != "sets"} | (
            {"acc": {name: s["acc"] for name, s in gains["sets"].items()}} if "sets" in gains else {})
        add_to_totals(summary, gains, "the set gains measured for devices (set_gains)")
    with writing(out / "summary.json"):
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    if ranks:
        ranks.finish(trainer)
    release_claim(out)          # complete: another command may now replace it
    return summary
