"""Pretrain and fine-tune as functions: data and checkpoint in, run directory out.
The CLI, the demo and the benchmarks all go through here."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from torch import nn

from edge_sel import threads
from edge_sel.config import TrainConfig
from edge_sel.core import bn_stats
from edge_sel.core.checkpoint import ModelCard, pinned, weights_digest
from edge_sel.data import Splits
from edge_sel.engine.evaluation.bn_bank import make_bank
from edge_sel.engine.levers.anchors import load_memory
from edge_sel.engine.levers.levers import check_lever_options, check_levers_memory
from edge_sel.engine.levers.source_pass import check_memory_options
from edge_sel.engine.loop import val_size
from edge_sel.engine.loop.set_gains import planned_words
from edge_sel.engine.loop.state import NoValidState, load_state
from edge_sel.engine.machine.device import pick_device, seed_everything
from edge_sel.engine.machine.distributed import detect_world
from edge_sel.engine.machine import peak_memory
from edge_sel.engine.machine.energy_setup import EnergyOptions
from edge_sel.engine.runs.data_options import (DataOptions, check_compatible, check_image_size, check_same_split,
                                               dataset_card, vars_of, warn_if_trained_on)
from edge_sel.core.outputs import check_out_dir, claim_in_place, release_claim
from edge_sel.engine.runs.head_first import PRETRAINED_BN_MOMENTUM
from edge_sel.engine.runs.input_norm import choose_norm, parse_input_norm
from edge_sel.engine.runs.out_dir import refuse_finished, restarted_here
from edge_sel.engine.runs.recipe import choose_recipe
from edge_sel.engine.runs.start import apply_start, check_start, pretrained_config
from edge_sel.engine.runs.training import train_model
from edge_sel.errors import InputError, existing_dir, read_json, required_file
from edge_sel.methods.options import check_options_used
from edge_sel.methods.presets import apply_preset, default_lr
from edge_sel.models import build_model, load_checkpoint
from edge_sel.models.input_size import fit_to_size, warn_below_use
from edge_sel.models.spec import ModelSpec, check_card_spec, factory, make_spec, spec_of_object, trust_named_file


def pretrain(model_name, data: DataOptions, cfg: TrainConfig, out: Path, overwrite: bool = False,
             quiet: bool = False, energy: EnergyOptions | None = None, meter=None, model_args: dict | None = None,
             init_weights: Path | None = None, splits: Splits | None = None, pretrained: str | None = None,
             input_norm: str | None = None) -> dict:
    """`model_name`: a registered name, a factory spec (models.spec) or a ModelSpec; `model_args`
    its keyword arguments; `init_weights` a local file of starting weights, `pretrained` a model's
    published weights ("imagenet"); `input_norm` the normalisation (engine/runs/input_norm.py,
    default: the weights' for a pretrained model, else the data's). `splits`: data already
    loaded (the Python API's tensors), used instead of `data.load()`.
    Under torchrun every rank calls this: rank 0 owns --out, and after a worker failure
    torchrun's restarted workers continue the run their job started (see restarted_here)."""
    cfg.validate()
    if cfg.bn_stats == bn_stats.PER_CONDITION or cfg.bn_conditions:
        raise InputError("--bn-stats per-condition: a fine-tune's choice (its conditions are the device's); "
                         "pretrain with frozen or reestimate")
    refuse_momentum_of_frozen(bn_stats.resolve(cfg), cfg)
    check_memory_options(cfg.anchors_per_class, cfg.fisher_samples)
    world = detect_world()
    if world.distributed and cfg.head_epochs:
        raise InputError("--head-epochs: a head stage runs in one process; pretrain without torchrun")
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
    parse_input_norm(input_norm)
    check_start(spec, init_weights, pretrained)
    trust_named_file(spec)       # the user named it here: its checkpoints rebuild here without asking again
    inputs = [*data.input_paths(), ("--init-weights", init_weights)]
    out = check_out_dir(out, overwrite, "pretrain", inputs) if world.is_main else Path(out)
    splits = splits if splits is not None else load_for(cfg, data)
    present = splits.train.labels.unique()
    if len(present) < 2:
        name = splits.train.class_names[int(present[0])] if len(present) else "none"
        raise InputError(f"--dataset {data.dataset}: the training data holds one class ({name}); a classifier "
                         f"needs samples of at least two classes")
    recipe, line = choose_recipe(cfg, len(splits.train), init_weights is not None or pretrained is not None,
                                 world.distributed)
    if line and not quiet:
        print(f"edge-sel: {line}", file=sys.stderr)
    recipes_line = planned_words(cfg.set_gains_steps, len(splits.val), world.distributed)
    if recipes_line and not quiet:
        print(f"edge-sel: {recipes_line}", file=sys.stderr)
    cfg.validate()
    model, card = new_model(spec, splits, data, cfg.seed, init_weights, pretrained, input_norm, quiet)
    warn_below_use(model, data.image_size, spec.name)
    if cfg.bn_momentum is None and (init_weights is not None or pretrained is not None):
        cfg.bn_momentum = PRETRAINED_BN_MOMENTUM     # config.json says what ran (engine/runs/head_first.py)
    if start_weights is not None:
        try:
            model.load_state_dict(start_weights)
        except RuntimeError as e:
            raise InputError(f"model: {spec.name} rebuilt with num_classes={splits.train.num_classes} does not "
                             f"take the given model's weights ({str(e).splitlines()[0]})") from None
    source = {"data": vars_of(data), "model": spec.to_json(),
              **({"init_weights": card.training["init_weights"]["file"]} if init_weights else {}),
              **({"pretrained": pretrained} if pretrained else {}),
              **({"input_norm": input_norm} if input_norm else {}), "recipe": recipe}
    return train_model("pretrain", model, card, splits, cfg, out, quiet, energy, source, meter)


def refuse_momentum_of_frozen(mode: str, cfg: TrainConfig) -> None:
    """--bn-momentum with statistics that never move was accepted and dropped: refused in one line."""
    if mode == bn_stats.FROZEN and cfg.bn_momentum is not None:
        said = "--bn-mode eval" if cfg.bn_stats is None else "--bn-stats frozen"
        raise InputError(f"--bn-momentum {cfg.bn_momentum:g} with {said}: frozen statistics never move; give one of them")


def new_model(spec: ModelSpec, splits: Splits, data: DataOptions, seed: int, init_weights: Path | None = None,
              pretrained: str | None = None, input_norm: str | None = None, quiet: bool = True):
    """A pretrain's model (the seed's initial weights, `init_weights` or `pretrained`) and its card;
    the tensors made anew and a normalisation other than the weights' are said in one line each."""
    seed_everything(seed)   # same initial weights for the same seed
    model = build_model(spec, splits.train.num_classes, splits.train.input_shape[0], splits.train.input_shape)
    started, line = apply_start(model, spec, splits.train.num_classes, init_weights, pretrained)
    mean, std, origin, note = choose_norm(input_norm, pretrained_config(spec, pretrained), splits.train)
    card = ModelCard(spec.name, splits.train.num_classes, splits.train.class_names,
                     splits.train.input_shape, mean, std, dataset_card(splits, data), model=spec.to_json(),
                     normalization_origin=origin)
    card.training = started
    for said in (line, note):
        if said and not quiet:
            print(f"edge-sel: note: {said}", file=sys.stderr)
    return model, card


def take_artifact_optimizer(cfg: TrainConfig, quiet: bool) -> None:
    """With --backend ort the optimizer is baked into the artifacts: options not typed take its
    settings (a default export carries plain SGD, which the command line's momentum 0.9 would
    contradict); typed ones are still checked against it by the backend."""
    from edge_sel.backends.ort_env import require_ort
    from edge_sel.backends.ort_manifest import optimizer_defaults
    existing_dir(cfg.artifacts, "--artifacts")   # a mistyped folder is said first, with ORT or without
    require_ort("--backend ort")          # then a missing or shadowed ORT, before the manifest is read
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


def load_for(cfg: TrainConfig, data: DataOptions) -> Splits:
    """The run's data. Under a memory budget, glibc maps every block of 64 KiB and more on its own
    from before the decode: the decode's large buffers otherwise stayed in the heap as free space,
    later steps and evaluations reused it without mapping, and it stayed resident after they freed
    it. Lite0 at 96 px under 123.9 MiB, the same plan repeated: 83-153 MiB of training measured
    (75-149 in the starting evaluation, before any step), and 83.9-84.3 (79.0-79.4) in four repeats
    with the setting made before the decode (engine/machine/peak_memory.py)."""
    if cfg.memory_budget_mb is not None:
        peak_memory.allocator_for_budget()
    return data.load()


def prepare_finetune_config(cfg: TrainConfig, quiet: bool = False) -> TrainConfig:
    """A fine-tune's options made whole (the preset's recipe, ORT artifacts' optimizer) and checked,
    before any file is touched. Applying it again changes nothing."""
    apply_preset(cfg)
    cfg.pin_for_memory_budget()
    if cfg.backend == "ort" and cfg.artifacts and cfg.explicit is not None:
        take_artifact_optimizer(cfg, quiet)
    cfg.validate()
    refuse_momentum_of_frozen(bn_stats.resolve(cfg), cfg)
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
    val_size.share_for_device(cfg)
    out = check_out_dir(out, overwrite, "finetune", [("--checkpoint", checkpoint), *data.input_paths(),
                                                     ("--artifacts", cfg.artifacts)])
    checkpoint = Path(checkpoint)
    opened = pinned(checkpoint)         # every file below and the digest from one version (a deployed link)
    model, card = load_checkpoint(opened)
    if splits is None:
        check_image_size(card, data, Path(checkpoint))
        fit_to_size(model, card, data.image_size, str(checkpoint))     # before decoding: a size it cannot take
        warn_below_use(model, data.image_size, card.architecture)
    splits = splits if splits is not None else load_for(cfg, data)
    check_compatible(card, splits, Path(checkpoint))
    check_same_split(card, splits, data, Path(checkpoint))
    warn_if_trained_on(card, splits, data, Path(checkpoint))
    warm = dict(card.training)
    card.dataset = dataset_card(splits, data)     # normalisation stays the pretrainer's
    # The starting weights by content: promote checks the run started from the model deployed now.
    source_info = {"data": vars_of(data), "checkpoint": str(checkpoint), "warmup": warm,
                   "checkpoint_sha256": weights_digest(opened)}
    if profile is not None:
        source_info["profile"] = profile
    memory = load_memory(opened, card, splits.train)
    check_levers_memory(cfg, memory, checkpoint)
    bank = make_bank(cfg, opened, model, card, splits.train, memory, out.name)
    return train_model("finetune", model, card, splits, cfg, out, quiet, energy, source_info, meter, memory=memory,
                       bank=bank)


def resume(run_dir: Path, quiet: bool = False, phase: str | None = None) -> dict:
    """Continue an interrupted run from its last good full-state checkpoint, with the options it
    was started with (RUN/config.json). `phase`: the command resuming it, which must match."""
    run_dir = existing_dir(run_dir, "--resume")
    config_file = required_file(run_dir, "config.json", "--resume", "run directory")
    # One writer per run: a resume holds it as a fresh run does (core/outputs.py), before it reads
    # what another writer could be changing. Under torchrun rank 0 writes it.
    if detect_world().is_main:
        claim_in_place(run_dir)
    try:
        return _read_and_resume(run_dir, config_file, quiet, phase)
    except BaseException:
        release_claim(run_dir, failed=True)
        raise


def _read_and_resume(run_dir: Path, config_file: Path, quiet: bool, phase: str | None) -> dict:
    try:
        saved = read_json(config_file)
        cfg = TrainConfig(**{f.name: saved[f.name] for f in dataclasses.fields(TrainConfig) if f.name in saved})
        if "precision" not in saved:    # written before --precision: mixed precision ran on CUDA only
            cfg.precision = "auto" if saved.get("amp", True) and saved.get("device", "auto") != "cpu" \
                and pick_device(saved.get("device", "auto")).type == "cuda" else "fp32"
        data = DataOptions(**{**saved["data"], "data_dir": saved["data"].get("data_dir")})
        energy = EnergyOptions(**saved.get("energy", {}))
        saved_phase = saved["phase"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{config_file}: unreadable run configuration ({e.__class__.__name__}: {e})") from None
    if phase is not None and saved_phase != phase:
        raise InputError(f"--resume {run_dir}: a {saved_phase} run; resume it with edge-sel {saved_phase} --resume")
    phase = saved_phase
    return _resume(run_dir, quiet, phase, saved, cfg, data, energy, config_file)


def _resume(run_dir: Path, quiet: bool, phase: str, saved: dict, cfg: TrainConfig, data: DataOptions,
            energy: EnergyOptions, config_file: Path) -> dict:
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
    splits = load_for(cfg, data)
    source_info = {k: saved[k] for k in ("data", "checkpoint", "warmup", "profile", "model", "init_weights",
                                         "pretrained", "input_norm", "checkpoint_sha256", "recipe")
                   if k in saved}
    if phase == "finetune":
        opened = pinned(saved["checkpoint"])        # weights, digest and bank from one version
        model, card = load_checkpoint(opened)
        digest = saved.get("checkpoint_sha256")
        if digest is not None and digest != weights_digest(opened):
            raise InputError(f"--resume {run_dir}: its starting checkpoint {saved['checkpoint']} has changed since "
                             f"the run started (another model was deployed); start a new run")
        fit_to_size(model, card, data.image_size, saved["checkpoint"])
        check_compatible(card, splits, Path(saved["checkpoint"]))
        card.dataset = dataset_card(splits, data)
        # The run's own copy: the starting checkpoint may have been replaced since (a deployed link).
        memory = load_memory(run_dir, card, splits.train)
        check_levers_memory(cfg, memory, run_dir)
        # The same bank as at the start: the start's conditions (unchanged with its weights) and
        # tonight's seeded draw.
        bank = make_bank(cfg, opened, model, card, splits.train, memory, run_dir.name)
    else:       # the same initial weights as the run's first start
        try:
            spec = ModelSpec.from_json(saved["model"])
        except ValueError as e:
            raise InputError(f"{config_file}: {e}") from None
        check_card_spec(spec, config_file)
        model, card = new_model(spec, splits, data, cfg.seed, saved.get("init_weights"), saved.get("pretrained"),
                                saved.get("input_norm"))
        memory, bank = None, (None, None)
    before = threads.keep_recorded(saved.get("threads"))
    try:
        return train_model(phase, model, card, splits, cfg, run_dir, quiet, energy, source_info, resume_state=state,
                           memory=memory, bank=bank)
    finally:
        if before is not None:
            import torch
            torch.set_num_threads(before)
