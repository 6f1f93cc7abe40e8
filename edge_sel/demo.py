"""`edge-sel demo`: the main job on the embedded default (scikit-learn digits).

Why a device fine-tunes at all: its data differs from the server's. The server pretrains on clean
digits (one half of the training set); the device holds the other half as its own camera sees it,
at low contrast, where the warmup falls to about chance. The device then adapts, cheapest lever
first: BatchNorm re-estimation (forward passes only), dense fine-tuning, random gating, and the
recipe (re-estimation, then a gated fine-tune of the blocks that need it). A table of accuracy
against counted FLOPs and joules, and one HTML report. Well under two minutes on a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sel.cli_base import Command
from edge_sel.config import TrainConfig
from edge_sel.core.records import read_records
from edge_sel.core.words import plural
from edge_sel.engine.run import DataOptions, finetune, pretrain
from edge_sel.report.summary import print_summary

DEVICE_SHIFT = "corrupt=contrast:4"


def _row(name: str, summary: dict, records_dir: Path) -> str:
    last = read_records(records_dir / "metrics.jsonl")[-1]
    t = summary["totals"]
    joules = "-" if not t.get("energy_j") else f"{t['energy_j']:.1f} {t.get('energy_method') or ''}"
    return (f"  {name:38s} {100 * (last.get('test_acc') or 0):6.1f}% {100 * (last.get('clean_test_acc') or 0):6.1f}% "
            f"{(t.get('flops_train') or 0) / 1e9:9.2f} {joules}")


@click.command("demo", cls=Command)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Directory for the demo's checkpoint, runs and report.")
@click.option("--epochs", type=int, default=8, show_default=True, help="Fine-tune epochs.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars or tables.")
def demo_cmd(out: Path, epochs: int, overwrite: bool, quiet: bool):
    """Pretrain on clean digits, adapt on a device whose digits are shifted, compare the levers."""
    from edge_sel.engine.run import check_out_dir
    check_out_dir(out, overwrite)
    click.echo("1/3 pretrain (server side): edgecnn on clean digits, shard 0/2")
    pretrain("edgecnn", DataOptions("digits", shard="0/2"),
             TrainConfig(epochs=6, batch_size=64, lr=0.05, seed=0), out / "warmup", overwrite=True,
             quiet=True)
    device = DataOptions("digits", shard="1/2", shift=DEVICE_SHIFT)
    click.echo(f"2/3 fine-tune (edge side): digits shard 1/2 as the device sees them (--shift {DEVICE_SHIFT})")
    summary = finetune(out / "warmup", device, TrainConfig(epochs=epochs, batch_size=64, lr=0.02, seed=0),
                       out / "finetune", overwrite=True, quiet=quiet)
    print_summary(summary, quiet=quiet)
    click.echo("3/3 the cheaper levers on the same device data, same seed")
    levers = [
        ("no adaptation", "none", TrainConfig(epochs=0, batch_size=64, seed=0)),
        ("BatchNorm re-estimation (500 images)", "bn-adapt",
         TrainConfig(epochs=0, batch_size=64, seed=0, bn_adapt=500)),
        ("random gating at 0.2", "random", TrainConfig(epochs=epochs, batch_size=64, lr=0.02, seed=0,
                                                        strategy="random", method={"target_activation": 0.2})),
        ("recipe (--preset adapt)", "recipe", TrainConfig(epochs=epochs, batch_size=64, lr=0.02, seed=0,
                                                            sparsity=None, method={"preset": "adapt"})),
    ]
    rows = [_row(f"dense fine-tune, {plural(epochs, 'epoch')}", summary, out / "finetune")]
    for label, name, cfg in levers:
        rows.append(_row(label, finetune(out / "warmup", device, cfg, out / name, overwrite=True, quiet=True),
                         out / name))
    click.echo(f"\n  {'method':38s} {'shifted':>7s} {'clean':>7s} {'GFLOP':>9s} joules")
    click.echo("\n".join(rows))
    from edge_sel.report.runs import load_run
    from edge_sel.report.writer import write_report
    runs = [load_run(out / name) for name in ("finetune", "bn-adapt", "random", "recipe")]
    click.echo(f"report: {write_report(runs, out / 'report', 'edge-sel demo: adapting to a shifted device')}")
