"""Merge `edge-sel bench transfer` outputs of the same settings run for other seeds at the same time
(say `--first-seed 0 --seeds 1` ... `--first-seed 4 --seeds 1`, one process each on one GPU) into one
bench: its table, paired differences, plot, results.json and report, written by the bench's own
functions. A bench stopped early gives the runs its results.json holds (written after every run).

    python tools/merge_bench_transfer.py --out runs/bench-transfer runs/bt-seed0 runs/bt-seed1 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_sel.bench.transfer_report import write_outputs

# What must agree between benches merged (everything but the seeds, their results and the time taken).
SETTINGS = ("suite", "checkpoint", "condition", "shift", "data", "methods", "epochs", "lr", "batch_size", "val_subset",
            "bn_momentum", "model", "full_ft_counted_mb", "budgets_mb", "input_shape", "fits", "own_process")
DERIVED = ("rows", "pairs")       # written again from the merged results


def _setting(bench: dict, key: str):
    """A bench started with --from-imagenet made its start in its own OUT/start, the same weights in
    every bench (the ImageNet weights and a head drawn from seed 0): those starts are one setting."""
    value = bench.get(key)
    return "its own OUT/start" if key == "checkpoint" and Path(value).name == "start" else value


def merge(benches: list[dict]) -> dict:
    first = benches[0]
    for other in benches[1:]:
        differ = [k for k in SETTINGS if _setting(other, k) != _setting(first, k)]
        if differ:
            raise SystemExit(f"merge_bench_transfer: the benches differ in {', '.join(differ)}")
    merged = {k: v for k, v in first.items() if k not in DERIVED}
    merged["results"] = {name: sorted((row for b in benches for row in b["results"].get(name, [])),
                                      key=lambda r: r["seed"]) for name in first["results"]}
    seeds = [r["seed"] for r in merged["results"]["start"]]
    if len(seeds) != len(set(seeds)):
        raise SystemExit(f"merge_bench_transfer: a seed is in more than one bench ({seeds})")
    merged["seeds"] = seeds
    merged["partial"] = any(b.get("partial") for b in benches)
    merged["wall_s"] = max(b["wall_s"] for b in benches)          # they ran at the same time
    merged["energy_methods"] = sorted({m for b in benches for m in b.get("energy_methods", [])})
    merged["merged_from"] = len(benches)
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("benches", type=Path, nargs="+")
    args = parser.parse_args()
    benches = []
    for folder in args.benches:
        path = folder / "results.json"
        if path.exists():
            benches.append(json.loads(path.read_text()))
        else:
            print(f"merge_bench_transfer: {folder} has no results.json (no seed finished): left out", file=sys.stderr)
    if not benches:
        raise SystemExit("merge_bench_transfer: no bench finished a seed")
    if args.out.resolve() in {b.resolve() for b in args.benches}:
        raise SystemExit(f"merge_bench_transfer: --out {args.out} is one of the benches merged")
    args.out.mkdir(parents=True, exist_ok=True)
    bench = merge(benches)
    written = write_outputs(bench, args.out)
    print(written["table"])
    print(f"merged {len(benches)} benches, seeds {bench['seeds']}: {args.out / 'table.md'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
