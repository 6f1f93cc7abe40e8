"""`edge-sel demo`: the main job on the embedded default (scikit-learn digits).

A server-side pretrain on one half of the training digits, then an edge fine-tune on the other
half, then the summary. Runs in well under two minutes on a 2-core laptop CPU."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sel.config import TrainConfig
from edge_sel.engine.run import DataOptions, finetune, pretrain
from edge_sel.report.summary import print_summary


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Directory for the demo's checkpoint, runs and report.")
@click.option("--epochs", type=int, default=8, show_default=True, help="Fine-tune epochs.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars or tables.")
def demo_cmd(out: Path, epochs: int, overwrite: bool, quiet: bool):
    """Pretrain on half of digits, fine-tune on the other half, print where the run is."""
    from edge_sel.cli import fail_cleanly
    from edge_sel.engine.run import check_out_dir

    @fail_cleanly
    def run():
        check_out_dir(out, overwrite)
        click.echo("1/2 pretrain (server side): edgecnn on digits shard 0/2")
        pretrain("edgecnn", DataOptions("digits", shard="0/2"),
                 TrainConfig(epochs=6, batch_size=64, lr=0.05, seed=0), out / "warmup", overwrite=True,
                 quiet=True)
        click.echo("2/2 fine-tune (edge side): digits shard 1/2 from the warmup checkpoint")
        summary = finetune(out / "warmup", DataOptions("digits", shard="1/2"),
                           TrainConfig(epochs=epochs, batch_size=64, lr=0.02, seed=0), out / "finetune",
                           overwrite=True, quiet=quiet)
        print_summary(summary, quiet=quiet)
        # --- report: sample gating beside its random control, then one HTML report of all three ---
        from edge_sel.methods import STRATEGIES
        from edge_sel.report.cli import write_report
        from edge_sel.report.runs import load_run
        runs = [out / "finetune"]
        for name in [s for s in ("sundew", "random") if s in STRATEGIES]:
            click.echo(f"+ {name} gating at 0.5 activation, same schedule and seed")
            finetune(out / "warmup", DataOptions("digits", shard="1/2"),
                     TrainConfig(epochs=epochs, batch_size=64, lr=0.02, seed=0, strategy=name,
                                 method={"target_activation": 0.5}), out / name, overwrite=True, quiet=True)
            runs.append(out / name)
        click.echo(f"report: {write_report([load_run(p) for p in runs], out / 'report', 'edge-sel demo')}")
    run()
