"""Pretrain and fine-tune as functions: data and checkpoint in, run directory out.
The CLI, the demo and the benchmarks all go through here."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edge_sel.version import __version__
from edge_sel.config import TrainConfig
from edge_sel.core.checkpoint import ModelCard, atomic_write_bytes, save_checkpoint, weights_digest
from edge_sel.core.records import RecordWriter
from edge_sel.core.words import plural
from edge_sel.data import Splits, load_source, make_splits, parse_shard
from edge_sel.data.shift import apply_shift, parse_shift
from edge_sel.device_caps import gpu_uuids
from edge_sel.engine.runs.ddp import RankSync, is_restart_of, launch_info
from edge_sel.engine.machine.device import pick_device, seed_everything
from edge_sel.engine.machine.distributed import detect_world
from edge_sel.engine import faults
from edge_sel.engine.machine import probe_cache
from edge_sel.engine.levers.anchors import Memory, carry_memory, load_memory
from edge_sel.engine.evaluation.bn_bank import make_bank, write_bank_for
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.levers.levers import check_lever_options, check_levers_memory
from edge_sel.engine.runs.signals import StopSignals
from edge_sel.engine.levers.source_pass import add_to_totals, check_memory_options, write_pretrain_memory
from edge_sel.engine.loop.state import NoValidState, StateWriteError, load_state
from edge_sel.engine.loop.trainer import Trainer
from edge_sel import threads
from edge_sel.errors import InputError, existing_dir, required_file, writing
from edge_sel.methods import make_strategy, make_updater
from edge_sel.methods.options import check_options_used
from edge_sel.methods.presets import apply_preset, default_lr
from edge_sel.models import build_model, count_parameters, load_checkpoint
from edge_sel.models.spec import (ModelSpec, check_card_spec, factory, load_init_weights, make_spec,
                                  spec_of_object)


@dataclass
class DataOptions:
    dataset: str = "digits"
    data_dir: Path | None = None
    val_fraction: float = 0.1
    shard: str | None = None
    subset: int | None = None
    per_class_cap: int | None = None
    split_seed: int = 0
    image_size: int | None = None
    shift: str | None = None          # a shift scenario (edge_sel.data.shift), e.g. "corrupt=fog:3"
    shift_seed: int = 0
    subset_seed: int | None = None    # another draw of --subset from the same shard (a night's new images)
    test_subset: int | None = None    # a class-balanced draw of N test images (a device's small labelled test set)

    def load(self) -> Splits:
        parse_shard(self.shard)
        parse_shift(self.shift)                  # a bad spec fails before any data is read
        return self.split(*load_source(self.dataset, self.data_dir, self.image_size))

    def split(self, train_full, test) -> Splits:
        """The splits of a loaded source (or of data handed over as objects, by the Python API)."""
        self._source = (train_full, test)        # for warmup_train_ids, without reading it again
        splits = make_splits(train_full, test, self.val_fraction, parse_shard(self.shard), self.subset,
                             self.per_class_cap, self.split_seed, self.subset_seed, self.test_subset)
        warn_short_subsets(splits, self.subset, self.test_subset)
        return apply_shift(splits, parse_shift(self.shift), self.shift_seed)

    def warmup_train_ids(self, trained: dict):
        """Sample ids a pretrain described by its model card's dataset (same source) trained on."""
        train_full, test = self._source
        warm = make_splits(train_full, test, trained["val_fraction"], parse_shard(trained.get("shard")),
                           trained.get("subset"), trained.get("per_class_cap"), trained["split_seed"],
                           trained.get("subset_seed"))
        return warm.train.index


def warn_short_subsets(splits: Splits, subset: int | None, test_subset: int | None) -> None:
    """A subset larger than the data is all of it: said, so a number typed is never silently not
    what ran."""
    for option, asked, got, what in (("--subset", subset, len(splits.train), "training samples (after the "
                                      "validation split, shard and cap)"),
                                     ("--test-subset", test_subset, len(splits.test), "test images")):
        if asked is not None and asked > got:
            warnings.warn(f"{option} {asked}: there are only {got} {what}; all {got} are used")


def check_out_dir(out: Path, overwrite: bool) -> Path:
    """Refuse to touch an existing non-empty --out unless --overwrite (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out}: already exists and is not empty; pass --overwrite to replace it")
    return out


def start_out_dir(out: Path) -> Path:
    """Called once inputs are validated, so a bad input never destroys an earlier run."""
    if out.is_dir():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create ({e.strerror})") from None
    return out


def check_compatible(card: ModelCard, splits: Splits, where: Path) -> None:
    shape = splits.train.input_shape
    if card.input_shape != shape:
        raise InputError(f"--checkpoint {where}: model expects inputs {card.input_shape}, dataset "
                         f"{splits.train.name} has {shape}")
    if card.num_classes != splits.train.num_classes:
        raise InputError(f"--checkpoint {where}: model has {card.num_classes} classes, dataset "
                         f"{splits.train.name} has {splits.train.num_classes}")
    if card.class_names != splits.train.class_names:
        raise InputError(f"--checkpoint {where}: class names {card.class_names[:4]}... differ from the "
                         f"dataset's {splits.train.class_names[:4]}...")


def summarize(records: list[dict], extra: dict, baseline: dict | None = None, kept: dict | None = None) -> dict:
    """Totals over the epoch records; the baseline evaluation (when a fine-tune made one) adds its
    evaluation FLOPs and joules, and `kept` says which weights the run directory holds and why."""
    last = records[-1] if records else {}
    best = max(records, key=lambda r: r.get("val_acc") or -1) if records else {}
    evaluated = ([baseline] if baseline else []) + records

    def total(key, over=records):
        vals = [r.get(key) for r in over if r.get(key) is not None]
        return sum(vals) if vals else None

    train_j, eval_j = total("energy_j"), total("eval_energy_j", evaluated)
    probe_flops = (extra.get("layout") or {}).get("probe_flops") or 0
    return {
        **extra,
        "epochs_run": len(records),
        # The weights the run directory holds (the best epoch, the start, or the last) on the test set.
        "output_model": output_model(last, kept),
        "final": {k: last.get(k) for k in ("val_acc", "test_acc", "train_loss", "train_acc")},
        "best_val": {"epoch": best.get("epoch"), "val_acc": best.get("val_acc"), "test_acc": best.get("test_acc")},
        "totals": {
            "samples_trained": total("backward_samples"),
            "forward_samples": total("forward_samples"),
            "flops_forward": total("flops_forward"), "flops_backward": total("flops_backward"),
            "flops_scoring": total("flops_scoring"), "flops_calibration": total("flops_calibration"),
            "flops_train": total("flops_train"),
            # Levers against forgetting, when they ran: the penalty's counted FLOPs (in flops_train) and
            # the replayed anchors (in samples_trained).
            **{k: total(k) for k in ("flops_penalty", "replay_samples") if total(k) is not None},
            "rolled_back_flops": total("rolled_back_flops"), "rolled_back_samples": total("rolled_back_samples"),
            "rolled_back_s": total("rolled_back_s"), "rolled_back_j": total("rolled_back_j"),
            "flops_eval": total("flops_eval", evaluated),
            # --bn-conditions: the bank's re-estimations and fingerprints (in flops_eval).
            **{k: total(k, evaluated) for k in ("flops_bn_bank", "bn_bank_samples") if total(k, evaluated) is not None},
            "train_wall_s": total("wall_s"), "eval_wall_s": total("eval_wall_s", evaluated),
            "energy_j": total("energy_j"), "eval_energy_j": total("eval_energy_j", evaluated),
            # The meter of the last record; a run of no epoch (statistics only) has its baseline's.
            "energy_source": (last or (baseline or {})).get("energy_source"),
            "energy_method": (last or (baseline or {})).get("energy_method"),
            # All in: training (scoring, calibration, rolled-back steps included), every evaluation
            # (the starting model, each epoch, the output model's test), and the layout probe's FLOPs.
            "flops_all": (total("flops_train") or 0) + (total("flops_eval", evaluated) or 0) + probe_flops,
            "energy_all_j": None if train_j is None and eval_j is None else (train_j or 0) + (eval_j or 0),
            "eval_energy_share": None if not train_j or eval_j is None else eval_j / (train_j + eval_j),
            "wall_all_s": (total("wall_s") or 0) + (total("eval_wall_s", evaluated) or 0),
        },
        "totals_note": ("flops_all adds the layout probe's counted FLOPs; energy_all_j is the metered training "
                        "and evaluation windows (the probe, run before the meter's first window, is not in it)"),
        "flops_note": "counted with torch.utils.flop_counter for the passes actually run",
        **({"baseline": {k: baseline.get(k) for k in ("val_acc", "test_acc", "flops_eval", "eval_energy_j")}}
           if baseline else {}),
        **({"kept": kept} if kept else {}),
        **({"reset": baseline["reset"]} if baseline and "reset" in baseline else {}),
    }


def output_model(last: dict, kept: dict | None) -> dict:
    """Which weights the run hands back and their accuracies (a pretrain's, and a --keep last
    run's, are the last epoch's); `anchor_acc` on the guard anchors when the run has them (promote's
    guard reads it)."""
    if kept is None or kept.get("kept") == "last":
        out = {"weights": "last", "epoch": last.get("epoch"), "val_acc": last.get("val_acc"),
               "test_acc": last.get("test_acc")}
        anchor_acc = last.get("anchor_acc")
    else:
        out = {"weights": kept["kept"], "epoch": kept.get("kept_epoch"), "val_acc": kept.get("kept_val_acc"),
               "test_acc": kept.get("kept_test_acc")}
        anchor_acc = kept.get("kept_anchor_acc")
    return {**out, **({"anchor_acc": anchor_acc} if "anchor_acc" in last or anchor_acc is not None else {})}


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
        return _train_model(phase, model, card, splits, cfg, out, quiet, energy, source_info, meter,
                            resume_state, signals, memory, bank)


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
        def build() -> Trainer:
            return Trainer(cfg, splits, model, card.mean, card.std, device, generator, strategy, updater,
                           phase=phase, meter=meter, guard=guard, budget_j=energy.budget_j, quiet=quiet,
                           state_dir=out / "state" if writes else None,
                           # a mid-epoch state would hold rank 0's share of the epoch only
                           checkpoint_every=0 if ranks else cfg.checkpoint_every, ranks=ranks, memory=memory,
                           bank=bank[0], bank_setup=bank[1])
        trainer = ranks.build_trainer(build, cfg) if ranks else build()
        if resume_state is None and writes:
            start_out_dir(out)
            if memory is not None:      # the output model, once deployed, keeps where it came from
                carry_memory(memory.directory, out)
            write_config(out, {"phase": phase, **cfg.to_json(), "energy": energy.to_json(), "threads": threads.describe(),
                               **source_info})
        writer = RecordWriter(out) if writes else None
        if resume_state is not None and writes:     # drops a record written after the checkpoint
            baseline = resume_state.get("baseline")
            writer.reset(([baseline] if baseline else []) + resume_state["records"])
        t0 = time.perf_counter()
        # Under torchrun a signal ends the worker at once: torchrun restarts every rank from the
        # last epoch checkpoint, which a rank stopping alone mid-epoch would only delay.
        if not ranks:
            signals.attach(trainer)
        records = trainer.run(writer, resume=resume_state)
        shipped = None
        # Rank 0 alone, from the final weights (a pretrain keeps its last epoch's), in the meter's window.
        if phase == "pretrain" and writes and cfg.anchors_per_class > 0 and trainer.stop_reason != "interrupted":
            shipped = write_pretrain_memory(trainer, out)
            card.source_memory = shipped["card"]
        meter_info = meter.describe() if hasattr(meter, "describe") else {}
    finally:
        if own_meter:
            meter.close()
    kept_weights = trainer.choice.weights_to_load()
    if kept_weights is not None:       # the output model is the best epoch's (or the starting) weights
        model.load_state_dict(kept_weights)
        push = getattr(trainer.backend, "load_state_dict", None)   # ort: into the session it exports from
        if push is not None:
            push({})
    interrupted = trainer.stop_reason == "interrupted"
    kept = trainer.choice.describe(interrupted) if phase == "finetune" else None
    finish_run = getattr(trainer.backend, "finish_run", None)   # ort: its checkpoint and model.onnx
    if finish_run is not None:
        finish_run(out)
    started = {k: card.training[k] for k in ("init_weights",) if k in card.training and phase == "pretrain"}
    card.training = {**started, "phase": phase, "epochs": len(records), "strategy": cfg.strategy,
                     "final_val_acc": records[-1]["val_acc"] if records else None,
                     "final_test_acc": records[-1]["test_acc"] if records else None, "seed": cfg.seed}
    if kept is not None:
        card.training.update({k: kept[k] for k in ("kept", "rule", "kept_epoch", "kept_val_acc", "kept_test_acc",
                                                   "baseline_val_acc")})
    if not writes:
        ranks.finish()
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
        "dataset": card.dataset, "config": cfg.to_json(),
        "total_wall_s": time.perf_counter() - t0, "run_dir": str(out),
        "energy_meter": meter_info, "stop_reason": trainer.stop_reason,
        **({"stop_signal": signal.Signals(signals.received or signal.SIGINT).name} if interrupted else {}),
        "idle_power_w": getattr(meter, "idle_power_w", None),
        # Measured before the first epoch, outside its time, joules and FLOPs (probe_* say how much).
        "layout": trainer.layout.to_json(), "precision": trainer.precision.to_json(), "sync_every": trainer.sync_every,
        "threads": threads.describe(),
        "probe_check": probe_cache.check_choices(records, cfg.batch_size, trainer.layout, trainer.precision),
        **({"validation_size": trainer.val_size_choice} if trainer.val_size_choice else {}),
        **({"world_size": world.size, "distributed": ranks.describe()} if ranks else {}),
    }, baseline=trainer.baseline, kept=kept)
    if unfinished_pretrain:
        summary["output_model"] = None
        summary["epochs_planned"] = cfg.epochs
    if trainer.bank is not None:
        summary["bn_bank"] = {**trainer.bank.describe(), "bytes": bank_written,
                              "written": bank_written is not None}
    if shipped is not None:
        summary["source_memory"] = {k: v for k, v in shipped.items() if k != "card"} | {
            k: shipped["card"][k] for k in ("anchors", "fisher", "source")}
        add_to_totals(summary, shipped)
    with writing(out / "summary.json"):
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    if ranks:
        ranks.finish()
    return summary


def write_config(out: Path, config: dict) -> None:
    try:
        atomic_write_bytes(out / "config.json", json.dumps(config, indent=2, default=str).encode())
    except OSError as e:
        raise StateWriteError(f"{out / 'config.json'}: cannot write ({e.strerror or e})") from None


def dataset_card(splits: Splits, data: DataOptions) -> dict:
    """What the model was trained on, including how the validation split was drawn: a fine-tune of
    the same dataset must hold out the same validation samples, or it would train on some of them."""
    return {"name": splits.train.name, "fingerprint": splits.train.fingerprint(),
            "train_samples": len(splits.train), "val_samples": len(splits.val), "test_samples": len(splits.test),
            "val_fraction": data.val_fraction, "split_seed": data.split_seed, "val_fingerprint": splits.val.fingerprint(),
            "shard": data.shard, "subset": data.subset, "per_class_cap": data.per_class_cap,
            **({"subset_seed": data.subset_seed} if data.subset_seed is not None else {})}


def warn_if_trained_on(card: ModelCard, splits: Splits, data: DataOptions, where: Path) -> None:
    """A fine-tune on samples its warmup trained on measures memorisation, not adaptation: say so
    (a warning, not a refusal: revisiting seen data can be intended). Only pretrains that trained
    an epoch, and cards that record the shard, are checked."""
    trained = card.dataset or {}
    if trained.get("name") != splits.train.name or not {"shard", "val_fraction", "split_seed"} <= trained.keys():
        return      # a card from before the split was recorded: its training samples cannot be rebuilt
    if card.training.get("phase") != "pretrain" or not card.training.get("epochs"):
        return      # a fresh initialisation (0 epochs, as bench reference makes) trained on nothing
    import torch
    from edge_sel.data.frames import scene_of
    # On a camera's stream a frame's id is not its sample's: compare the scenes.
    seen = torch.isin(scene_of(splits.train).cpu(), data.warmup_train_ids(trained).cpu())
    count = int(seen.sum())
    if count:
        shard = f"shard {trained['shard']}" if trained.get("shard") else "all of its training part"
        hint = (f"; fine-tune on another shard, e.g. --shard {other_shard(trained['shard'])}" if trained.get("shard")
                else "; pretrain on a shard (e.g. --shard 0/2) to keep data for fine-tuning")
        warnings.warn(f"{count} of {len(seen)} fine-tuning samples were in the warmup's training data "
                      f"({where} was pretrained on {shard} of {trained['name']}){hint}")


def other_shard(spec: str) -> str:
    k, n = parse_shard(spec)
    return f"{(k + 1) % n}/{n}"


def check_same_split(card: ModelCard, splits: Splits, data: DataOptions, where: Path) -> None:
    """Refuse a fine-tune on the pretrain's dataset with another validation split (older model
    cards without split parameters are accepted)."""
    trained = card.dataset or {}
    if trained.get("name") != splits.train.name or "val_fraction" not in trained:
        return
    for option, key in (("--val-fraction", "val_fraction"), ("--split-seed", "split_seed")):
        if trained[key] != getattr(data, key):
            raise InputError(f"{option} {getattr(data, key)}: the checkpoint {where} was pretrained on "
                             f"{splits.train.name} with {option} {trained[key]}; use the same value so that "
                             f"validation holds no pretraining sample")


def pretrain(model_name, data: DataOptions, cfg: TrainConfig, out: Path, overwrite: bool = False,
             quiet: bool = False, energy: EnergyOptions | None = None, meter=None, model_args: dict | None = None,
             init_weights: Path | None = None, splits: Splits | None = None) -> dict:
    """`model_name`: a registered name, a factory spec (models.spec) or a ModelSpec; `model_args`
    its keyword arguments; `init_weights` a local file of starting weights. `splits`: data already
    loaded (the Python API's tensors), used instead of `data.load()`.
    Under torchrun every rank calls this: rank 0 owns --out, and after a worker failure
    torchrun's restarted workers continue the run their job started (see restarted_here)."""
    cfg.validate()
    check_memory_options(cfg.anchors_per_class, cfg.fisher_samples)
    world = detect_world()
    if world.distributed and restarted_here(Path(out)):
        return resume(out, quiet, phase="pretrain")
    start_weights = None
    if isinstance(model_name, nn.Module):      # a model object (the Python API): its class, its weights
        start_weights = {k: v.detach().cpu().clone() for k, v in model_name.state_dict().items()}
        model_name = spec_of_object(model_name)
    spec = model_name if isinstance(model_name, ModelSpec) else make_spec(model_name)
    if model_args:
        spec = ModelSpec(spec.name, {**spec.kwargs, **model_args}, spec.file_sha256)
    factory(spec)                # an unknown name or unimportable factory fails before --out or the data
    out = check_out_dir(out, overwrite) if world.is_main else Path(out)
    splits = splits if splits is not None else data.load()
    present = splits.train.labels.unique()
    if len(present) < 2:
        name = splits.train.class_names[int(present[0])] if len(present) else "none"
        raise InputError(f"--dataset {data.dataset}: the training data holds one class ({name}); a classifier "
                         f"needs samples of at least two classes")
    model, card = new_model(spec, splits, data, cfg.seed, init_weights)
    if start_weights is not None:
        try:
            model.load_state_dict(start_weights)
        except RuntimeError as e:
            raise InputError(f"model: {spec.name} rebuilt with num_classes={splits.train.num_classes} does not "
                             f"take the given model's weights ({str(e).splitlines()[0]})") from None
    source = {"data": vars_of(data), "model": spec.to_json(),
              **({"init_weights": card.training["init_weights"]["file"]} if init_weights else {})}
    return train_model("pretrain", model, card, splits, cfg, out, quiet, energy, source, meter)


def new_model(spec: ModelSpec, splits: Splits, data: DataOptions, seed: int, init_weights: Path | None = None):
    """A pretrain's model (the seed's initial weights, or `init_weights`) and its card."""
    seed_everything(seed)   # same initial weights for the same seed
    model = build_model(spec, splits.train.num_classes, splits.train.input_shape[0], splits.train.input_shape)
    loaded = load_init_weights(model, init_weights) if init_weights is not None else None
    mean, std = splits.train.channel_stats()
    card = ModelCard(spec.name, splits.train.num_classes, splits.train.class_names,
                     splits.train.input_shape, mean, std, dataset_card(splits, data), model=spec.to_json())
    if loaded:
        card.training = {"init_weights": loaded}
    return model, card


def restarted_here(out: Path) -> bool:
    """True when torchrun restarted the job whose run --out holds (same torchrun run id): its
    workers resume from the last checkpoint. A plain rerun still needs --overwrite or --resume."""
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("phase") == "pretrain" and is_restart_of(config)


def take_artifact_optimizer(cfg: TrainConfig, quiet: bool) -> None:
    """With --backend ort the optimizer is baked into the artifacts: options not typed take its
    settings (a default export carries plain SGD, which the command line's momentum 0.9 would
    contradict); typed ones are still checked against it by the backend."""
    from edge_sel.backends.ort_env import require_ort
    from edge_sel.backends.ort_manifest import optimizer_defaults
    require_ort("--backend ort")          # a missing or shadowed ORT is the first thing to say
    taken = {}
    for field, value in optimizer_defaults(Path(cfg.artifacts)).items():
        if field not in cfg.explicit and getattr(cfg, field) != value:
            setattr(cfg, field, value)
            taken[field] = value
    if "optimizer" in taken and "lr" not in cfg.explicit:
        cfg.lr = taken["lr"] = default_lr(cfg.optimizer)
    if taken and not quiet:
        print(f"edge-sel: note: from the artifacts' optimizer ({cfg.artifacts}): "
              + ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in taken.items()), file=sys.stderr)


def prepare_finetune_config(cfg: TrainConfig, quiet: bool = False) -> TrainConfig:
    """A fine-tune's options made whole (the preset's recipe, ORT artifacts' optimizer) and checked,
    before any file is touched. Applying it again changes nothing."""
    apply_preset(cfg)
    if cfg.backend == "ort" and cfg.artifacts and cfg.explicit is not None:
        take_artifact_optimizer(cfg, quiet)
    cfg.validate()
    given = cfg.method if cfg.explicit is None else {k: v for k, v in cfg.method.items() if k in cfg.explicit}
    check_options_used(cfg.strategy, cfg.method.get("gate"), cfg.sparsity, given)
    check_lever_options(cfg)
    return cfg


def finetune(checkpoint: Path, data: DataOptions, cfg: TrainConfig, out: Path, overwrite: bool = False,
             quiet: bool = False, energy: EnergyOptions | None = None, meter=None,
             profile: dict | None = None, splits: Splits | None = None) -> dict:
    """`profile`: what a device profile applied (edge_sel.profiles.apply), kept in config and summary.
    `splits`: data already loaded (the Python API's tensors), used instead of `data.load()`."""
    prepare_finetune_config(cfg, quiet)
    out = check_out_dir(out, overwrite)
    model, card = load_checkpoint(Path(checkpoint))
    splits = splits if splits is not None else data.load()
    check_compatible(card, splits, Path(checkpoint))
    check_same_split(card, splits, data, Path(checkpoint))
    warn_if_trained_on(card, splits, data, Path(checkpoint))
    warm = dict(card.training)
    card.dataset = dataset_card(splits, data)     # normalisation stays the pretrainer's
    # The starting weights by content: promote checks the run started from the model deployed now.
    source_info = {"data": vars_of(data), "checkpoint": str(checkpoint), "warmup": warm,
                   "checkpoint_sha256": weights_digest(checkpoint)}
    if profile is not None:
        source_info["profile"] = profile
    memory = load_memory(Path(checkpoint), card, splits.train)
    check_levers_memory(cfg, memory, Path(checkpoint))
    bank = make_bank(cfg, Path(checkpoint), model, card, splits.train, memory, out.name)
    return train_model("finetune", model, card, splits, cfg, out, quiet, energy, source_info, meter, memory=memory,
                       bank=bank)


def resume(run_dir: Path, quiet: bool = False, phase: str | None = None) -> dict:
    """Continue an interrupted run from its last good full-state checkpoint, with the options it
    was started with (RUN/config.json). `phase`: the command resuming it, which must match."""
    run_dir = existing_dir(run_dir, "--resume")
    config_file = required_file(run_dir, "config.json", "--resume", "run directory")
    try:
        saved = json.loads(config_file.read_text())
        cfg = TrainConfig(**{f.name: saved[f.name] for f in dataclasses.fields(TrainConfig) if f.name in saved})
        if "precision" not in saved:    # written before --precision: mixed precision ran on CUDA only
            cfg.precision = "auto" if saved.get("amp", True) and saved.get("device", "auto") != "cpu" \
                and pick_device(saved.get("device", "auto")).type == "cuda" else "fp32"
        data = DataOptions(**{**saved["data"], "data_dir": saved["data"].get("data_dir")})
        energy = EnergyOptions(**saved.get("energy", {}))
        saved_phase = saved["phase"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{config_file}: unreadable run configuration ({e.__class__.__name__}: {e})") from None
    if phase is not None and saved_phase != phase:
        raise InputError(f"--resume {run_dir}: a {saved_phase} run; resume it with edge-sel {saved_phase} --resume")
    phase = saved_phase
    state_dir = run_dir / "state"
    if not state_dir.is_dir() or not any(state_dir.iterdir()):
        # Killed before its first checkpoint: nothing was trained, so it starts again from the
        # beginning with the same options (and ends with the same records as an unbroken run).
        state = None
    else:
        try:
            state = load_state(state_dir)
        except NoValidState as e:
            raise InputError(f"--resume {run_dir}: {e}") from None
    refuse_finished(run_dir, cfg.epochs)
    splits = data.load()
    source_info = {k: saved[k] for k in ("data", "checkpoint", "warmup", "profile", "model", "init_weights",
                                         "checkpoint_sha256")
                   if k in saved}
    if phase == "finetune":
        model, card = load_checkpoint(Path(saved["checkpoint"]))
        digest = saved.get("checkpoint_sha256")
        if digest is not None and digest != weights_digest(saved["checkpoint"]):
            raise InputError(f"--resume {run_dir}: its starting checkpoint {saved['checkpoint']} has changed since "
                             f"the run started (another model was deployed); start a new run")
        check_compatible(card, splits, Path(saved["checkpoint"]))
        card.dataset = dataset_card(splits, data)
        # The run's own copy: the starting checkpoint may have been replaced since (a deployed link).
        memory = load_memory(run_dir, card, splits.train)
        check_levers_memory(cfg, memory, run_dir)
        # The same bank as at the start: the start's conditions (unchanged with its weights) and
        # tonight's seeded draw.
        bank = make_bank(cfg, Path(saved["checkpoint"]), model, card, splits.train, memory, run_dir.name)
    else:       # the same initial weights as the run's first start
        try:
            spec = ModelSpec.from_json(saved["model"])
        except ValueError as e:
            raise InputError(f"{config_file}: {e}") from None
        check_card_spec(spec, config_file)
        model, card = new_model(spec, splits, data, cfg.seed, saved.get("init_weights"))
        memory, bank = None, (None, None)
    before = threads.keep_recorded(saved.get("threads"))
    try:
        return train_model(phase, model, card, splits, cfg, run_dir, quiet, energy, source_info, resume_state=state,
                           memory=memory, bank=bank)
    finally:
        if before is not None:
            import torch
            torch.set_num_threads(before)


def refuse_finished(run_dir: Path, epochs: int) -> None:
    """A run is finished once its summary.json says so (all epochs, its strategy's end, or its
    energy budget). A run killed after its last state write but before its summary is not: its
    resume writes the outputs without training again."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    reason = summary.get("stop_reason")
    if reason == "interrupted":
        return
    if reason == "energy_budget":
        raise InputError(f"--resume {run_dir}: the run stopped on its energy budget and is finished; start a "
                         f"new run to train more")
    raise InputError(f"--resume {run_dir}: the run already finished ({summary.get('epochs_run', epochs)} of "
                     f"{epochs} epochs)")


def vars_of(data: DataOptions) -> dict:
    return {f.name: (str(v) if isinstance(v := getattr(data, f.name), Path) else v)
            for f in dataclasses.fields(data)}
