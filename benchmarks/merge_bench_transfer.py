"""Merge `edge-sel bench transfer` outputs of the same settings run for other seeds at the same time
(say `--first-seed 0 --seeds 1` ... `--first-seed 4 --seeds 1`, one process each on one GPU) into one
bench: its table, paired differences, plot, results.json and report, written by the bench's own
functions. A bench stopped early gives the runs its results.json holds (written after every run);
one whose results.json cannot be read is left out, in one line. --out is claimed as a bench's is.

    python benchmarks/merge_bench_transfer.py --out runs/bench-transfer runs/bt-seed0 runs/bt-seed1 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_sel.bench.transfer_report import write_outputs
from edge_sel.core.outputs import check_out_dir, staged_out_dir
from edge_sel.errors import InputError, WriteError

COMMAND = "merge bench transfer"      # what --out's marker says wrote it

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
    refused = {name: sorted((r for b in benches for r in (b.get("refused") or {}).get(name, [])), key=lambda r: r["seed"])
               for name in dict.fromkeys(n for b in benches for n in b.get("refused") or {})}
    merged["refused"] = refused
    merged["best_fixed"] = best_fixed_agreed(benches, merged["results"])
    stopped = [b["stopped"] for b in benches if b.get("stopped")]
    merged["stopped"] = {"signal": ", ".join(dict.fromkeys(s["signal"] for s in stopped)),
                         "runs": [r for s in stopped for r in s["runs"]]} if stopped else None
    return merged


def best_fixed_agreed(benches: list[dict], results: dict) -> dict | None:
    """Each budget's best fixed set, where every bench chose the same one. Each bench chose by its own
    seeds' means, so benches may differ: then no set ran on every seed, its rows are left out of the
    merge (with the sets each chose, said in one line) and no planner difference is stated."""
    chosen = [b["best_fixed"] for b in benches if b.get("best_fixed")]
    if not chosen:
        return None
    merged = {}
    for f, first in chosen[0].items():
        methods = [c.get(f, {}).get("method") for c in chosen]
        merged[f] = dict(first)
        if len(set(methods)) > 1:
            merged[f].update(method=None, split=methods)
            results.pop(f"best fixed@{f}", None)
            print(f"merge_bench_transfer: the best fixed set at {f} differs between the benches ({', '.join(map(str, methods))}):"
                  f" left out; run the seeds in one bench to compare the planner with it", file=sys.stderr)
    return merged


def read_bench(folder: Path) -> dict | None:
    """A bench's results.json, or None (said in one line): none, or one that cannot be read whole."""
    path = folder / "results.json"
    if not path.exists():
        print(f"merge_bench_transfer: {folder} has no results.json (no seed finished): left out", file=sys.stderr)
        return None
    try:
        bench = json.loads(path.read_text())
        if isinstance(bench, dict) and isinstance(bench.get("results"), dict):
            return bench
        why = "not a bench transfer record"
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
    print(f"merge_bench_transfer: {path}: cannot be read ({why}): left out", file=sys.stderr)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier merge's --out.")
    parser.add_argument("benches", type=Path, nargs="+")
    args = parser.parse_args()
    benches = [b for b in map(read_bench, args.benches) if b is not None]
    if not benches:
        raise SystemExit("merge_bench_transfer: no bench finished a seed")
    bench = merge(benches)
    try:        # the claim a bench's --out takes: never onto a bench merged, one writer at a time
        check_out_dir(args.out, args.overwrite, COMMAND, [("a bench merged", b) for b in args.benches])
        with staged_out_dir(args.out, COMMAND) as staged:
            written = write_outputs(bench, staged)
    except (InputError, WriteError) as e:
        raise SystemExit(f"merge_bench_transfer: {e}") from None
    print(written["table"])
    print(f"merged {len(benches)} benches, seeds {bench['seeds']}: {args.out / 'table.md'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
