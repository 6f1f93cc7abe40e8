"""Commands over a device's data: `shift` writes a shifted copy of a dataset as an image folder,
`trigger` chooses which frames of a stream to keep under a budget."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sel.cli_base import Command
from edge_sel.errors import InputError


@click.command("shift", cls=Command)
@click.option("--dataset", default="digits", show_default=True, help="digits | cifar10 | synthetic | folder:PATH | pack:PATH")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where the CIFAR-10 archive lives.")
@click.option("--shift", "spec", required=True, help="The shift to apply (same grammar as finetune --shift).")
@click.option("--shift-seed", type=int, default=0, show_default=True, help="Seed of the shift.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all", show_default=True,
              help="Which split to write (train holds the training and validation samples).")
@click.option("--limit", type=int, default=None, help="At most N images per class and split.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Image folder to create: OUT/train/<class>/, OUT/test/<class>/, and contact_sheet.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
def shift_cmd(dataset, data_dir, spec, shift_seed, split, limit, out, overwrite):
    """Write a shifted copy of a dataset as an image folder (readable as --dataset folder:OUT)."""
    from edge_sel.data import load_source, make_splits
    from edge_sel.data.shift import apply_shift, parse_shift
    from edge_sel.data.sources import source_paths
    from edge_sel.data.folder import CONTACT_SHEET
    from edge_sel.data.write_folder import contact_sheet, write_image_folder
    from edge_sel.core.outputs import check_out_dir, staged_out_dir
    shift = parse_shift(spec)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive number of images, got {limit}")
    out = check_out_dir(out, overwrite, "shift", source_paths(dataset, data_dir))
    train_full, test = load_source(dataset, data_dir)
    # The whole training part (no validation held out) shifted as a fine-tune would see it.
    shifted = apply_shift(make_splits(train_full, test, val_fraction=0.0), shift, shift_seed)
    counts = {}
    with staged_out_dir(out, "shift") as staging:
        if split in ("train", "all"):
            counts["train"] = write_image_folder(shifted.train, staging / "train", limit)
        if split in ("test", "all"):
            counts["test"] = write_image_folder(shifted.test, staging / "test", limit)
        contact_sheet(train_full, staging / CONTACT_SHEET, seed=shift_seed)
    click.echo(f"wrote {', '.join(f'{n} {k} images' for k, n in counts.items())} to {out} "
               f"(and contact_sheet.png: every corruption at severities 1-5)")


@click.command("trigger", cls=Command)
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="The deployed model.")
@click.option("--dataset", default="digits", show_default=True, help="digits | cifar10 | synthetic | folder:PATH | pack:PATH")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Where the CIFAR-10 archive lives.")
@click.option("--shard", default=None, help="Stratified shard K/N of the training part, e.g. 1/2.")
@click.option("--subset", type=int, default=None, help="Class-balanced subset of N scenes.")
@click.option("--shift", "spec", default="frames=10", show_default=True,
              help="The stream (finetune --shift grammar; frames=F[:scene|shuffled] makes one).")
@click.option("--shift-seed", type=int, default=0, show_default=True, help="Seed of the shift.")
@click.option("--budget-frames", type=int, default=None, help="Keep at most N frames.")
@click.option("--budget-joules", type=float, default=None,
              help="Keep the frames that training on them tonight affords: J joules at the joules per FLOP "
                   "measured over the trigger's forward passes.")
@click.option("--significance", type=click.Choice(["entropy", "none"]), default="none", show_default=True,
              help="Per frame: none (novelty alone, no forward pass: the widest scene coverage), or the model's "
                   "predictive entropy times novelty (one counted forward pass per frame: uncertain frames first).")
@click.option("--novelty", type=float, default=1.0, show_default=True, help="Weight of the novelty signal (0 to 1).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Forward-pass batch size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the stream order and the gate.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to create: kept.csv (chosen frames, scores) and trigger.json (coverage, cost).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
def trigger_cmd(checkpoint, dataset, data_dir, shard, subset, spec, shift_seed, budget_frames, budget_joules,
                significance, novelty, batch_size, seed, out, overwrite):
    """The attention trigger: the Sundew gate with novelty chooses which frames of a stream to keep
    under a budget, and reports the scenes they cover against a random choice of the same size."""
    from edge_sel.engine.machine.energy_setup import EnergyOptions
    from edge_sel.engine.runs.data_options import DataOptions
    from edge_sel.core.outputs import check_out_dir, start_out_dir
    from edge_sel.data.sources import source_paths
    from edge_sel.engine.evaluation.bn_bank import attach_saved_bank
    from edge_sel.engine.night.trigger import run_trigger
    from edge_sel.models import load_checkpoint
    for option, value in (("--budget-frames", budget_frames), ("--budget-joules", budget_joules),
                          ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise InputError(f"{option} must be > 0, got {value}")
    if not 0 <= novelty <= 1:
        raise InputError(f"--novelty must be in [0, 1], got {novelty}")
    if (budget_frames is None) == (budget_joules is None):
        raise InputError("trigger: give one budget, --budget-frames N or --budget-joules J")
    if budget_joules is not None and significance == "none":
        raise InputError("--budget-joules: needs --significance entropy (joules per FLOP are measured over its "
                         "forward passes)")
    out = check_out_dir(out, overwrite, "trigger", [("--checkpoint", checkpoint), *source_paths(dataset, data_dir)])
    model, card = load_checkpoint(checkpoint)
    # The stream is the whole training part (or its shard): nothing is held out for validation.
    splits = DataOptions(dataset, data_dir, val_fraction=0.0, shard=shard, subset=subset, shift=spec,
                         shift_seed=shift_seed).load()
    if splits.train.input_shape != list(card.input_shape):
        raise InputError(f"--dataset: images are {splits.train.input_shape}, the checkpoint expects {card.input_shape}")
    bank = attach_saved_bank(model.eval(), checkpoint, card)     # the deployed model as it predicts
    start_out_dir(out, "trigger")
    meter = EnergyOptions().open()
    try:
        result = run_trigger(model, card.mean, card.std, splits.train, budget_frames, budget_joules, significance,
                             novelty, batch_size, seed, meter, out, bank)
    finally:
        meter.close()
    r, c = result["random_same_size"], result["cost"]
    click.echo(f"kept {result['kept']} of {result['frames_seen']} frames: {result['scenes_covered']} of "
               f"{result['scenes_seen']} scenes (random choice of {result['kept']}: {r['mean']:.1f}, 95% of draws "
               f"{r['p2.5']:.0f}-{r['p97.5']:.0f})")
    click.echo(f"choosing cost {c['flops_total'] / 1e9:.3f} GFLOP counted (forward {c['flops_forward'] / 1e9:.3f}, "
               f"novelty {c['flops_novelty'] / 1e9:.4f}), {c['energy_j']:.2f} J ({c['energy_source']}, "
               f"{c['energy_method']}); wrote {out / 'kept.csv'}, {out / 'trigger.json'}")
