"""The benchmark table: one row per system, mean ± std over seeds, optionally the seeds' published
figures beside ours. Rows are formatted strings (Markdown and HTML) and raw numbers (CSV)."""

from __future__ import annotations

import csv
from pathlib import Path


def _pm(stat: dict | None, scale: float = 1.0, spec: str = ".2f") -> str:
    if not stat:
        return "-"
    text = format(stat["mean"] * scale, spec)
    if stat.get("std") is not None:
        text += " ± " + format(stat["std"] * scale, spec)
    return text


def columns(energy_kind: str, test_full_size: int, test_100_size: int, published: bool) -> list[tuple]:
    cols = [
        ("system", "system"), ("epochs", "epochs"),
        ("test_full", f"test acc % ({test_full_size:,} test)"),
        ("test_100", f"test acc % ({test_100_size:,}: 100/class)"),
        ("best_val", "best val acc %"),
        ("fwd", "fwd GFLOP"), ("bwd", "bwd GFLOP"), ("scoring", "scoring GFLOP"),
        ("vs_dense", "train FLOPs / dense"),
        ("wall", "train wall s"),
        ("energy", f"train energy J ({energy_kind})"), ("per_epoch", f"J / epoch ({energy_kind})"),
        ("activation", "activation"),
    ]
    if published:
        cols += [("pub_full", "published test %"), ("pub_100", "published 100/class %"),
                 ("pub_flops", "published FLOPs / savings claim"), ("pub_time", "published time s"),
                 ("pub_source", "published source")]
    return cols


def rows(systems: list[str], agg: dict[str, dict], published: dict | None) -> list[dict]:
    dense = agg.get("dense", {}).get("flops_train")
    out = []
    for name in systems:
        a = agg[name]
        train = a.get("flops_train")
        act = _pm(a.get("activation"), 1, ".3f")
        if a.get("gate_activation") and a.get("activation") and \
                abs(a["gate_activation"]["mean"] - a["activation"]["mean"]) > 1e-3:
            act += f" (loss counted: {a['gate_activation']['mean']:.3f})"
        if a.get("matched_activation"):
            act += f" (matched: {a['matched_activation']['mean']:.3f})"
        row = {
            "system": name, "epochs": _pm(a.get("epochs"), 1, ".0f"),
            "test_full": _pm(a.get("test_full_acc"), 100), "test_100": _pm(a.get("test_100_acc"), 100),
            "best_val": _pm(a.get("best_val_acc"), 100),
            "fwd": _pm(a.get("flops_forward"), 1e-9, ",.1f"), "bwd": _pm(a.get("flops_backward"), 1e-9, ",.1f"),
            "scoring": _pm(a.get("flops_scoring"), 1e-9, ",.1f"),
            "vs_dense": f"{train['mean'] / dense['mean']:.2f}" if train and dense else "-",
            "wall": _pm(a.get("train_wall_s"), 1, ".1f"),
            "energy": _pm(a.get("energy_j"), 1, ",.0f"), "per_epoch": _pm(a.get("energy_per_epoch_j"), 1, ",.1f"),
            "activation": act,
        }
        if published is not None:
            p = published.get(name, {})
            row.update({
                "pub_full": "-" if p.get("test_full") is None else f"{p['test_full']:.2f}",
                "pub_100": "-" if p.get("test_100") is None else f"{p['test_100']:.1f}",
                "pub_flops": p.get("flops", "-"),
                "pub_time": "-" if p.get("time_s") is None else f"{p['time_s']:,.0f}",
                "pub_source": (f"{p['source']} ({p['setup']})" if p.get("setup") else p.get("source", "-"))
                if p else "-",
            })
        out.append(row)
    return out


def markdown(cols: list[tuple], table_rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in table_rows:
        lines.append("| " + " | ".join(str(r.get(k, "-")).replace("|", "/") for k, _ in cols) + " |")
    return "\n".join(lines)


RAW = ("test_full_acc", "test_100_acc", "best_val_acc", "epochs", "samples_trained", "activation", "gate_activation",
       "matched_activation", "flops_forward", "flops_backward", "flops_scoring", "flops_train", "flops_eval",
       "train_wall_s", "eval_wall_s", "energy_j", "energy_per_epoch_j", "eval_energy_j")


def write_csv(path: Path, systems: list[str], agg: dict[str, dict]) -> None:
    """Raw numbers: for each metric its mean and std over seeds (accuracy as a fraction, FLOPs in FLOPs)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["system", "seeds", "energy_source", "energy_kind"]
                   + [f"{k}_{s}" for k in RAW for s in ("mean", "std")])
        for name in systems:
            a = agg[name]
            n = max((v["n"] for v in a.values() if isinstance(v, dict)), default=0)
            cells = []
            for k in RAW:
                stat = a.get(k) or {}
                cells += [stat.get("mean", ""), "" if stat.get("std") is None else stat["std"]]
            w.writerow([name, n, a.get("energy_source") or "", a.get("energy_kind") or ""] + cells)
