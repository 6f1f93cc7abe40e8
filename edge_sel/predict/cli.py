"""`edge-sel predict`: a checkpoint or deployed model answers for images, frame by frame by default."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edge_sel.errors import InputError
from edge_sel.predict.conditions import DEFAULT_WINDOW


@click.command("predict")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="A checkpoint, run or deployed directory (--backend torch), or an export directory (--backend ort).")
@click.option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True,
              help="torch, or ONNX Runtime on what `edge-sel export` wrote (one graph per condition of the bank).")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Images per call: 1 is a camera's stream (each frame's condition read with the frames before "
                   "it); more are sets (each image its own condition within the batch's mixture).")
@click.option("--window", type=int, default=DEFAULT_WINDOW, show_default=True,
              help="Frames a condition is expected to last: a switch needs about ln(W) nats of evidence.")
@click.option("--no-bank", is_flag=True, help="Predict with the model's own statistics, ignoring a bank it keeps.")
@click.option("--resize", is_flag=True, help="Scale images of another size to the model's input (else refused).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON lines file (path, class, label, condition, latency_ms) [default: stdout].")
@click.option("--summary", "summary_path", type=click.Path(path_type=Path), default=None,
              help="Also write the closing summary as JSON to this file.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out or --summary file (never an input image or the checkpoint's files).")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda (torch backend).")
@click.option("--threads", type=int, default=None, envvar="EDGE_SEL_THREADS", show_envvar=True,
              help="Intra-op threads (torch and ORT) [default: the CPUs other work leaves free at the start].")
@click.option("--progress-every", type=int, default=1000, show_default=True,
              help="Without a terminal, a progress line on stderr every N images.")
@click.option("--quiet", is_flag=True, help="No progress and no summary lines on stderr.")
def predict_cmd(paths, checkpoint, backend, batch_size, window, no_bank, resize, out, summary_path, overwrite,
                device, threads, progress_every, quiet):
    """Predict images (files, or directories taken in file-name order = arrival order) with a model and
    the BatchNorm statistics it keeps per condition; one JSON line per image, then a summary."""
    from edge_sel.energy import open_meter
    from edge_sel.predict.predictor import Predictor
    from edge_sel.predict.run import LineSink, predict_files, read_inputs
    for option, value in (("--batch-size", batch_size), ("--window", window - 1), ("--progress-every", progress_every),
                          ("--threads", threads)):
        if value is not None and value <= 0:
            raise InputError(f"{option} must be > {1 if option == '--window' else 0}, got "
                             f"{window if option == '--window' else value}")
    check_outputs(out, summary_path, overwrite, checkpoint, paths)
    from edge_sel.threads import apply_threads
    chosen = apply_threads(threads)
    predictor = Predictor(checkpoint, backend=backend, window=window, use_bank=not no_bank, device=device,
                          threads=chosen["count"])
    files, images = read_inputs(list(paths), predictor.card.input_shape, resize)
    if summary_path is not None:
        _writable(summary_path, "--summary")
    sink = LineSink(out)
    bar = None
    progress = None
    if not quiet:
        if sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(unit="img", file=sys.stderr, leave=False)

            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)
        else:
            def progress(done, total):
                if done % progress_every < batch_size or done == total:
                    print(f"predict: {done}/{total} images", file=sys.stderr, flush=True)
    meter = open_meter()
    meter.start()
    try:
        summary = predict_files(predictor, files, images, sink, batch_size, meter, progress)
    finally:
        meter.close()
        sink.close()
        if bar is not None:
            bar.close()
    summary["checkpoint"] = str(checkpoint)
    summary["threads"] = chosen
    if summary_path is not None:
        from edge_sel.core.checkpoint import atomic_write_bytes
        from edge_sel.errors import writing
        with writing(summary_path):     # whole or as it was: a full disk leaves no torn summary
            atomic_write_bytes(summary_path, (json.dumps(summary, indent=1) + "\n").encode())
    if not quiet:
        for line in summary_lines(summary):
            print(line, file=sys.stderr)


def check_outputs(out: Path | None, summary_path: Path | None, overwrite: bool, checkpoint: Path, paths) -> None:
    """--out and --summary: never onto the checkpoint, an input image or folder, or each other; an
    existing file replaced only with --overwrite (core/outputs.py)."""
    from edge_sel.core.outputs import check_out_file, claim_out_file, release_file_claims
    ctx = click.get_current_context(silent=True)
    if ctx is not None:     # the claims end with the command (else with the process)
        ctx.call_on_close(release_file_claims)
    inputs = [("--checkpoint", checkpoint), *(("the input", p) for p in paths)]
    if out is not None and str(out) != "-":
        check_out_file(out, overwrite, inputs, "--out")
        claim_out_file(out, "--out")        # held until this process ends: one writer at a time
        inputs.append(("--out", out))
    if summary_path is not None:
        check_out_file(summary_path, overwrite, inputs, "--summary")
        claim_out_file(summary_path, "--summary")


def _writable(path: Path, option: str) -> None:
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise InputError(f"{option} {path}: cannot write ({e.strerror})") from None


def summary_lines(s: dict) -> list[str]:
    joules = ("-" if s["joules_per_1000"] is None
              else f"{s['joules_per_1000']:.2f} J per 1,000 images ({s['energy_source']}, {s['energy_method']})")
    chosen = ", ".join(f"{k} {v}" for k, v in s["chosen"].items())
    return [f"predicted {s['images']} images ({s['backend']}, batch {s['batch_size']}): {s['images_per_s']} images/s; "
            f"latency p50 {s['latency_ms_p50']:.2f} ms, p95 {s['latency_ms_p95']:.2f} ms",
            f"energy {joules}; peak resident memory {s['peak_rss_mb']:.0f} MiB",
            f"conditions chosen: {chosen}"]
