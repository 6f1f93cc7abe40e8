"""`edge-sel predict`: images in arrival order through a Predictor, one JSON line per image, and a
closing summary measured like a training step (latency p50/p95, images/s, joules per 1,000 images
with the meter that measured them, peak resident memory).

Each batch's lines are written once the batch is predicted, every byte of them (a write may take
only part), so a run stopped at any instant leaves whole lines only: the images answered so far. A
write that fails (a full disk, a file-size limit) cuts the file back to its last whole line and
stops the command with one line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from edge_sel.device_caps import peak_rss_mb
from edge_sel.errors import InputError, WriteError
from edge_sel.predict.images import list_images, read_image
from edge_sel.predict.predictor import Predictor


class LineSink:
    """Where the JSON lines go: a file (created or truncated; each batch's lines written whole, or
    cut back to the lines before them) or stdout."""

    def __init__(self, out: Path | None):
        self.fd = None
        self.out = out
        self.whole = 0          # bytes of whole lines in the file
        if out is not None and str(out) != "-":
            try:
                self.fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as e:
                raise InputError(f"--out {out}: cannot write ({e.strerror})") from None

    def write(self, text: str) -> None:
        if self.fd is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            self.write_whole(text.encode())

    def write_whole(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                if written <= 0:
                    raise OSError(0, "the system wrote nothing")
                view = view[written:]
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.whole)
            except OSError:
                pass            # the error to report is the write's
            raise WriteError(f"--out {self.out}: cannot write ({e.strerror or e}); it keeps the whole lines "
                             f"written before ({self.whole} bytes)") from None
        self.whole += len(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))


def read_inputs(paths: list[Path], input_shape, resize: bool) -> tuple[list[Path], list[torch.Tensor]]:
    """Every image under `paths`, decoded and checked before the first prediction: a bad one stops
    the run before it has written anything."""
    files = list_images(paths)
    return files, [read_image(f, list(input_shape), resize) for f in files]


def predict_files(predictor: Predictor, files: list[Path], images: list[torch.Tensor], sink: LineSink,
                  batch_size: int = 1, meter=None, progress=None) -> dict:
    """Predict the images in order, writing a JSON line each to `sink`; returns the summary."""
    latencies: list[float] = []
    counts: dict[str, int] = {}
    if meter is not None:
        meter.begin("predict")
    t0 = time.perf_counter()
    done = 0
    for start in range(0, len(files), batch_size):
        batch = torch.stack(images[start:start + batch_size])
        t = time.perf_counter()
        out = predictor.predict(batch)
        ms = (time.perf_counter() - t) * 1000
        lines = []
        for i, path in enumerate(files[start:start + batch_size]):
            counts[out.conditions[i]] = counts.get(out.conditions[i], 0) + 1
            lines.append(json.dumps({"path": str(path), "class": out.classes[i], "label": out.labels[i],
                                     "condition": out.conditions[i], "latency_ms": round(ms, 3)}))
            latencies.append(ms)
        sink.write("\n".join(lines) + "\n")
        done += len(batch)
        if progress is not None:
            progress(done, len(files))
    wall = time.perf_counter() - t0
    energy = meter.end("predict") if meter is not None else {}
    joules = energy.get("energy_j")
    flops = predictor.flops_per_image()
    return {
        "images": done, "batch_size": batch_size, "backend": predictor.backend,
        "conditions": predictor.chooser.names if predictor.chooser else None,
        "chosen": counts, "window": predictor.chooser.window if predictor.chooser else None,
        "wall_s": round(wall, 4), "images_per_s": round(done / wall, 2) if wall > 0 else None,
        "latency_ms_p50": percentile(latencies, 0.5), "latency_ms_p95": percentile(latencies, 0.95),
        "latency_note": "per batch: choosing each image's condition and the forward pass (file decoding excluded)",
        "energy_j": joules, "joules_per_1000": (joules / done * 1000) if joules is not None and done else None,
        "energy_source": energy.get("energy_source"), "energy_method": energy.get("energy_method"),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "flops_forward_per_image": flops["forward"], "flops_choice_per_image": flops["choice"],
    }
