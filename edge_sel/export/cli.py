"""`edge-sel export`: a checkpoint becomes an inference model and ORT training artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sel.backends.ort_schemes import SCHEMES, parse_schemes
from edge_sel.cli_base import Command
from edge_sel.export.exporter import BN_MODES, DEFAULT_SCHEMES


def print_export(manifest: dict, out: Path) -> None:
    inf = manifest["inference_model"]
    click.echo(f"{out / inf['file']}: inference model, max |onnx - torch| = {inf['max_abs_diff_vs_torch']:.2e}")
    t = manifest["training"]
    click.echo(f"training artifacts ({t['optimizer']['name']}, BatchNorm {t['bn_mode']} mode):")
    click.echo(f"  {'scheme':<11} {'tensors':>7} {'entries':>10} {'grad nodes':>10} {'ConvGrad(dW)':>12} {'nodes':>6}")
    for name, s in manifest["schemes"].items():
        b = s["backward"]
        click.echo(f"  {name:<11} {s['trainable_tensors']:>7} {s['trainable_entries']:>10,} {b['grad_nodes']:>10} "
                   f"{b['conv_grad_nodes']:>7} ({b['conv_weight_grad_nodes']}) {b['training_nodes']:>6}")
    if "bias" in manifest["schemes"]:
        click.echo("  bias saves gradient and optimizer memory, not much compute: the input gradient "
                   "still flows through every layer")


@click.command("export", cls=Command)
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Checkpoint directory.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Artifact directory to create.")
@click.option("--scheme", "schemes", multiple=True,
              help=f"Trainable set per artifact set: {' | '.join(SCHEMES)} | all | planned (what a --memory-budget "
                   f"run's plan chose to train: --checkpoint is that run's directory); repeat or comma-separate "
                   f"[default: {','.join(DEFAULT_SCHEMES)}].")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True,
              help="Optimizer baked into the artifacts (SGD: no momentum, no weight decay).")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [default: 5e-4].")
@click.option("--bn-mode", type=click.Choice(BN_MODES), default="eval", show_default=True,
              help="eval: frozen BatchNorm statistics; train: batch statistics, running stats updated.")
@click.option("--ort-format", is_flag=True, help="Also write .ort files (for minimal ORT builds).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@click.option("--quiet", is_flag=True, help="No table.")
def export_cmd(checkpoint, out, schemes, optimizer, weight_decay, bn_mode, ort_format, overwrite, quiet):
    """Export a checkpoint as model.onnx plus ONNX Runtime training artifacts."""
    from edge_sel.export.exporter import export_artifacts
    chosen = parse_schemes(schemes) if schemes else list(DEFAULT_SCHEMES)
    manifest = export_artifacts(checkpoint, out, chosen, bn_mode=bn_mode, optimizer=optimizer,
                                weight_decay=weight_decay, ort_format=ort_format, overwrite=overwrite,
                                option="export")
    if not quiet:
        print_export(manifest, Path(out))


def export_after_pretrain(out: Path, quiet: bool) -> None:
    """`pretrain --export-artifacts`: the default schemes into OUT/artifacts."""
    from edge_sel.export.exporter import export_artifacts
    manifest = export_artifacts(out, Path(out) / "artifacts", DEFAULT_SCHEMES, overwrite=True,
                                option="--export-artifacts", own_checkpoint=True)
    if not quiet:
        print_export(manifest, Path(out) / "artifacts")
