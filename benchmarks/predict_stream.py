"""A deployed model on a camera's stream, frame by frame through `edge-sel predict`, beside the same
frames in whole batches of one condition, in batches that mix two conditions, and the warmup alone.

    python benchmarks/predict_stream.py --deployed HOME/checkpoints/deployed --warmup HOME/checkpoints/warmup \\
        --dataset folder:../shared/data/cifar10-jpeg --conditions clean,gaussian_noise:3,clean,fog:3 --seeds 5
    python benchmarks/predict_stream.py --deployed RUN --warmup CKPT --image-size 96 --test-subset 2000 \\
        --conditions clean,gaussian_noise:3 --segment 100 --frames 2000 --seeds 3

Per seed a stream of test images (segments of --segment frames cycling through --conditions, classes
in runs of --run) is written as PNG files and predicted by the real command line one frame at a time
(arrival order = file-name order). Prints accuracy per condition for each way of asking, and the
paired differences over seeds with 95% intervals: frames - whole batches, frames - warmup, mixed -
warmup. --ort also exports the deployed model and checks ONNX Runtime's classes and logits against
torch's on the first seed's stream.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from edge_sel.data.camera import apply_condition, camera_stream
from edge_sel.engine.runs.data_options import DataOptions
from edge_sel.predict.predictor import Predictor

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(diffs: list[float]) -> str:
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return f"{mean:+.2f}"
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T_975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def write_frames(images: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        a = im.permute(1, 2, 0).numpy() if im.shape[0] == 3 else im[0].numpy()
        Image.fromarray(a).save(folder / f"{i:06d}.png")


def acc(classes, labels) -> float:
    return 100 * float((torch.as_tensor(classes) == labels).float().mean())


def batches(predictor: Predictor, images: torch.Tensor, size: int) -> list[int]:
    return [c for s in range(0, len(images), size) for c in predictor.predict(images[s:s + size]).classes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deployed", type=Path, required=True)
    ap.add_argument("--warmup", type=Path, required=True)
    ap.add_argument("--dataset", default="folder:../shared/data/cifar10-jpeg")
    ap.add_argument("--conditions", default="clean,gaussian_noise:3,clean,fog:3")
    ap.add_argument("--segment", type=int, default=250)
    ap.add_argument("--run", type=int, default=30)
    ap.add_argument("--frames", type=int, default=2000, help="frames per stream")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="whole and mixed batch size")
    ap.add_argument("--ort", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None, help="folder images resized to S x S (the model's side)")
    ap.add_argument("--test-subset", type=int, default=None,
                    help="class-balanced test images the streams draw from [all]; the training split is not decoded")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    # Only the test split is used: a small training subset keeps a folder dataset from decoding all of it.
    test = DataOptions(a.dataset, shard="1/2", subset=20, image_size=a.image_size, test_subset=a.test_subset).load().test
    conditions = a.conditions.split(",")
    distinct = list(dict.fromkeys(conditions))
    shifted = [c for c in distinct if c != "clean"]
    rows: dict[str, dict[str, list[float]]] = {}

    def put(way, condition, value):
        rows.setdefault(way, {}).setdefault(condition, []).append(value)

    for seed in range(a.seeds):
        stream = camera_stream(test, conditions, a.segment, a.run, seed)
        images, labels = stream.images[:a.frames], stream.labels[:a.frames]
        names = stream.conditions[:a.frames]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "frames"
            write_frames(images, folder)
            out, summary = Path(tmp) / "pred.jsonl", Path(tmp) / "summary.json"
            cmd = [sys.executable, "-m", "edge_sel", "predict", "--checkpoint", str(a.deployed), str(folder),
                   "--out", str(out), "--summary", str(summary), "--quiet"]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            subprocess.run(cmd, check=True)
            lines = [json.loads(x) for x in out.read_text().splitlines()]
            s = json.loads(summary.read_text())
            if a.ort and seed == 0:
                check_ort(a, folder, tmp, lines, images)
        frame_classes = torch.tensor([x["class"] for x in lines])
        whole, warm = Predictor(a.deployed), Predictor(a.warmup)
        for c in distinct:
            idx = torch.tensor([i for i, n in enumerate(names) if n == c])
            put("frame by frame (edge-sel predict)", c, acc(frame_classes[idx], labels[idx]))
            put(f"whole batches of {a.batch}, one condition", c, acc(batches(whole, images[idx], a.batch), labels[idx]))
            put(f"warmup alone, batches of {a.batch}", c, acc(batches(warm, images[idx], a.batch), labels[idx]))
            chosen = [lines[i]["condition"] for i in idx.tolist()]
            put("frames' chosen condition (share of the most chosen)", c,
                100 * max(chosen.count(k) for k in set(chosen)) / len(chosen))
        # Batches mixing clean and each shifted condition half and half, in a seeded random order.
        g = torch.Generator().manual_seed(seed)
        for c in shifted:
            pick = torch.randperm(len(test), generator=g)[:10 * a.batch // 2]
            # through apply_condition both: a folder dataset keeps its images at their own size until then
            clean, other = apply_condition(test, pick, "clean", 0), apply_condition(test, pick, c, 0)
            both, y = torch.cat([clean, other]), torch.cat([test.labels[pick]] * 2)
            order = torch.randperm(len(both), generator=g)
            is_other = order >= len(pick)
            got_bank = torch.tensor(batches(Predictor(a.deployed), both[order], a.batch))
            got_warm = torch.tensor(batches(Predictor(a.warmup), both[order], a.batch))
            for half, name in ((~is_other, "clean"), (is_other, c)):
                put(f"mixed batches of {a.batch} (clean + {c})", name, acc(got_bank[half], y[order][half]))
                put(f"warmup, same mixed batches (clean + {c})", name, acc(got_warm[half], y[order][half]))
        put("latency p50 ms", "all", s["latency_ms_p50"])
        put("latency p95 ms", "all", s["latency_ms_p95"])
        print(f"seed {seed}: " + ", ".join(f"{c} {rows['frame by frame (edge-sel predict)'][c][-1]:.2f}"
                                           for c in distinct), flush=True)
    print(f"\n{a.seeds} seeds, {a.frames} frames each ({a.conditions}, segments of {a.segment}, classes in runs "
          f"of {a.run}); mean accuracy %:")
    for way, per in rows.items():
        print(f"  {way:58s} " + "  ".join(f"{c} {sum(v) / len(v):6.2f}" for c, v in per.items()))
    frame = rows["frame by frame (edge-sel predict)"]
    whole = rows[f"whole batches of {a.batch}, one condition"]
    warm = rows[f"warmup alone, batches of {a.batch}"]
    print("\npaired differences, points (mean [95% interval] over seeds):")
    for c in distinct:
        print(f"  {c:18s} frames - whole batches {interval([x - y for x, y in zip(frame[c], whole[c])])}; "
              f"frames - warmup {interval([x - y for x, y in zip(frame[c], warm[c])])}")
    for c in shifted:
        bank = rows[f"mixed batches of {a.batch} (clean + {c})"]
        base = rows[f"warmup, same mixed batches (clean + {c})"]
        for half in ("clean", c):
            print(f"  mixed (clean + {c}), {half} half: bank - warmup "
                  f"{interval([x - y for x, y in zip(bank[half], base[half])])}")


def check_ort(a, folder: Path, tmp: str, lines: list[dict], images: torch.Tensor) -> None:
    art = Path(tmp) / "art"
    subprocess.run([sys.executable, "-m", "edge_sel", "export", "--checkpoint", str(a.deployed), "--out", str(art),
                    "--scheme", "classifier"], check=True, stdout=subprocess.DEVNULL)
    out = Path(tmp) / "ort.jsonl"
    subprocess.run([sys.executable, "-m", "edge_sel", "predict", "--checkpoint", str(art), "--backend", "ort",
                    str(folder), "--out", str(out), "--quiet"], check=True)
    ort_lines = [json.loads(x) for x in out.read_text().splitlines()]
    same = sum(x["class"] == y["class"] for x, y in zip(lines, ort_lines))
    same_condition = sum(x["condition"] == y["condition"] for x, y in zip(lines, ort_lines))
    torch_p, ort_p = Predictor(a.deployed), Predictor(art, backend="ort")
    worst = max(float((torch_p.predict(im).logits - ort_p.predict(im).logits).abs().max()) for im in images)
    print(f"ORT: same class for {same} of {len(lines)} frames, same condition for {same_condition}; "
          f"largest logit difference {worst:.2e} (fp32)", flush=True)


if __name__ == "__main__":
    main()
