"""The Python half of benchmarks/gpu_reference.sh: what the GPU machine offers (`check`), the carried
data decoded once (`data`), and after every stage the output folder's summary.json and table.md
rewritten from whatever the stages have written so far (`summarize`), so a run stopped by a time
limit keeps what finished: a bench stage that ran out of time is read from its runs' epoch records.

    python benchmarks/gpu_reference.py check OUT/gpu-check.json
    python benchmarks/gpu_reference.py data PACK
    python benchmarks/gpu_reference.py summarize WORK OUT
    python benchmarks/gpu_reference.py smoke-pack PATH
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path


def check(dest: Path) -> int:
    """torch, CUDA and NVML as edge-sel sees them; NVML's joules over two seconds of an idle GPU
    (without NVML, the estimate over a fifth of a second)."""
    import torch
    from edge_sel.device_caps import gpu_uuids
    from edge_sel.energy.choose import open_meter
    from edge_sel.engine.machine.device import pick_device
    device = pick_device("auto")
    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
             "cuda_available": torch.cuda.is_available(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    meter = open_meter(["nvml"], gpu_uuids=gpu_uuids(device))
    described = meter.describe()
    found["nvml"] = {"meters": described.get("meters"), "skipped": described.get("skipped")}
    found["nvml_present"] = any(m.get("name") == "nvml" for m in described.get("meters") or [])
    if described.get("meters"):
        # The card's idle power before any stage, and whether other processes were on it then.
        meter.start()
        meter.begin("idle")
        time.sleep(2.0 if found["nvml_present"] else 0.2)
        found["nvml"]["idle_2s"] = idle = meter.end("idle")
        if found["nvml_present"]:
            found["idle_power_w"] = idle.get("avg_power_w")
            found["idle_shared_with"] = idle.get("energy_shared_with")
    meter.close()
    dest.write_text(json.dumps(found, indent=1, default=str))
    print(json.dumps(found, default=str))
    return 0 if device.type == "cuda" or "--cpu-ok" in sys.argv else 1


def data(pack: str, image_size: int | None = None) -> int:
    """Decode the pack into the cache once, so every stage after this maps it instead."""
    from edge_sel.data import load_source
    t0 = time.perf_counter()
    train, test = load_source(f"pack:{pack}", image_size=image_size)
    print(f"decoded {len(train):,} + {len(test):,} images of {pack} at {train.input_shape} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def smoke_pack(dest: Path) -> int:
    """A tiny pack for the smoke run: 30 digits a class (PNG, as RGB: the Lite0 stage takes colour
    images, as CIFAR-10's pack holds), train and test, packed."""
    import tempfile
    from dataclasses import replace
    from edge_sel.data import load_source
    from edge_sel.data.pack import write_pack
    from edge_sel.data.write_folder import write_image_folder
    train, test = (replace(ds, images=ds.images.expand(-1, 3, -1, -1).contiguous()) for ds in load_source("digits"))
    with tempfile.TemporaryDirectory() as tmp:
        write_image_folder(train, Path(tmp) / "train", limit=30)
        write_image_folder(test, Path(tmp) / "test", limit=10)
        info = write_pack(Path(tmp), dest)
    print(f"smoke pack: {info['images']} digits in {dest}")
    return 0


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            break                                       # a line cut by the stage's time limit
    return [r for r in out if r.get("phase") != "baseline"]


def _run_facts(run_dir: Path) -> dict:
    """What the GPU path chose and measured in one run: layout, precision, host reads, memory."""
    recs = _records(run_dir)
    facts = {"run": str(run_dir), "epochs_recorded": len(recs)}
    if recs:
        energy = [r.get("energy_j") for r in recs if r.get("energy_j") is not None]
        facts.update(last_val_acc=recs[-1].get("val_acc"),
                     train_wall_s=round(sum(r.get("wall_s") or 0 for r in recs), 2),
                     energy_per_epoch_j=[round(e, 1) for e in energy], energy_kind=recs[-1].get("energy_method"),
                     energy_shared_with=max((r["energy_shared_with"] for r in recs
                                             if r.get("energy_shared_with") is not None), default=None),
                     memory_measured_mb=max((r.get("memory_measured_mb") or 0 for r in recs), default=None),
                     memory_measure_method=recs[-1].get("memory_measure_method"),
                     memory_counted_mb=max((r.get("memory_counted_mb") or 0 for r in recs), default=None),
                     memory_data_mb=recs[-1].get("memory_data_mb"))
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    for key in ("layout", "precision"):
        if isinstance(summary.get(key), dict):
            facts[key] = {k: v for k, v in summary[key].items() if k not in ("cache_key",)}
    if "sync_every" in summary:
        facts["sync_every"] = summary["sync_every"]
    return facts


def _stage(work: Path, name: str, status: dict) -> dict:
    """One stage: its bench table where it finished, else the epochs its runs recorded."""
    where = work / name
    out = {"status": status}
    bench = where / "bench.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        out["notes"] = b.get("notes")
        out["systems"] = [{"name": s["name"], **s["per_seed"][0], "published": s.get("published")}
                          for s in b["systems"]]
    runs = sorted(p.parent for p in where.glob("runs/**/metrics.jsonl"))
    out["runs"] = [_run_facts(r) for r in runs]
    return out


def _row(stage: str, s: dict, runs: list[dict], idle_w: float | None = None) -> str:
    dirs = {str(Path(d).resolve()) for d in s.get("run_dirs", [])}
    mine = [r for r in runs if str(Path(r["run"]).resolve()) in dirs]
    mem = max((r.get("memory_measured_mb") or 0 for r in mine), default=0)
    counted = max((r.get("memory_counted_mb") or 0 for r in mine), default=0)
    method = next((r.get("memory_measure_method") for r in mine if r.get("memory_measure_method")), "-")
    pub = s.get("published") or {}
    tflop = s["flops_train"] / 1e12 if s.get("flops_train") is not None else None
    joules = f"{_num(s.get('energy_per_epoch_j'), ',.0f')} ({s.get('energy_kind') or '-'})"
    per_epoch_s = s["train_wall_s"] / s["epochs"] if s.get("train_wall_s") and s.get("epochs") else None
    net = None if idle_w is None or per_epoch_s is None or s.get("energy_per_epoch_j") is None \
        else s["energy_per_epoch_j"] - idle_w * per_epoch_s
    cells = [stage, s["name"], s.get("epochs"), _num(s.get("test_full_acc"), ".2%"),
             _num(s.get("test_100_acc"), ".2%"), _num(tflop, ".3f"), _num(s.get("train_wall_s"), ".0f"), joules,
             _num(net, ",.0f"),
             _num(s.get("activation"), ".3f"),
             f"{counted:,.0f} / {mem:,.0f} ({method})", pub.get("test_full", "-"), pub.get("time_s", "-")]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec).rstrip("%")


def unfinished_result(result: str) -> bool:
    """A stage's result that is not a finished one: stopped by its limit, ended by a signal, no time."""
    return result.startswith(("partial", "stopped", "skipped: no time"))


def summarize(work: Path, out: Path) -> int:
    stages = {}
    status_file = work / "stages.jsonl"
    for line in status_file.read_text().splitlines() if status_file.exists() else []:
        st = json.loads(line)
        stages[st["stage"]] = st
    summary = {"what": "CIFAR-10 reference on one GPU: benchmarks/gpu_reference.sh", "stages": {}}
    check_file = out / "gpu-check.json"
    if check_file.exists():
        summary["machine"] = json.loads(check_file.read_text())
    machine = summary.get("machine") or {}
    idle_w = machine.get("idle_power_w")
    lines = ["| stage | system | epochs | test % (full) | test % (100/class) | train TFLOP (counted) | train s "
             "(measured) | J / epoch | J / epoch less idle | activation | memory MiB counted / measured | "
             "published test % | published s |", "|" + "---|" * 13]
    partial = []
    for name, st in stages.items():
        if st.get("bench"):
            entry = _stage(work, name, st)
            for s in entry.get("systems", []):
                lines.append(_row(name, s, entry["runs"], idle_w))
            if "systems" not in entry:
                for r in entry["runs"]:
                    partial.append(f"- {name}: {r['run'].split(name + '/', 1)[-1]} stopped after "
                                   f"{r['epochs_recorded']} epoch(s) ({st['result']}); last val acc "
                                   f"{r.get('last_val_acc')}, J per epoch {r.get('energy_per_epoch_j')}")
            summary["stages"][name] = entry
        else:
            summary["stages"][name] = {"status": st}
    unfinished = [n for n, st in stages.items() if unfinished_result(st["result"])]
    summary["partial"] = unfinished
    text = ["# CIFAR-10 reference on one GPU", "",
            *([f"**PARTIAL**: {', '.join(unfinished)} did not finish (a time limit, a signal or no time "
               "left): their rows are missing, or are listed below with the epochs their runs recorded.", ""]
              if unfinished else []),
            "Figures as the stages wrote them: accuracy and time measured, FLOPs counted, joules as the "
            "'J / epoch' column says (NVML where present: measured), memory counted for one training step "
            "beside the peak measured by the method named.",
            *([f"Idle power of the card, measured by `check` before the stages: {idle_w:.1f} W over 2 s (NVML"
               + {0: ", the card to itself)", None: "; whether other processes were on the card, NVML could not "
                  "say)"}.get(machine.get("idle_shared_with"),
                              f", {machine.get('idle_shared_with')} other process(es) on the card: not idle)")
               + "; 'less idle' subtracts it over each epoch's seconds. NVML reads the whole card: the stages "
               "run one at a time, and a run whose meter saw other processes says 'shared'."]
              if idle_w is not None else []), "", *lines, ""]
    if partial:
        text += ["Stopped before they finished (what their runs recorded):", "", *partial, ""]
    text += ["| stage | result | s | limit s |", "|---|---|---|---|",
             *(f"| {n} | {st['result']} | {st['wall_s']} | {st['limit_s']} |" for n, st in stages.items())]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "table.md").write_text("\n".join(text) + "\n")
    return 0


def main() -> int:
    command, *args = sys.argv[1:] or ["--help"]
    if command == "check":
        return check(Path(args[0]))
    if command == "data":
        return data(args[0], int(args[1]) if len(args) > 1 else None)
    if command == "smoke-pack":
        return smoke_pack(Path(args[0]))
    if command == "summarize":
        return summarize(Path(args[0]), Path(args[1]))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
