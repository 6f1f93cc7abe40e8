"""Merge `edge-sel bench memory` outputs of the same settings run for other seeds (say seeds 0-2 and,
at the same time on another core, `--first-seed 3 --seeds 2`) into one bench: its table, paired
differences, plot, `bench.json` and report, written by the bench's own functions.

    python benchmarks/merge_bench_memory.py --out runs/bench-memory-96 runs/bench-a runs/bench-b

A bench stopped before it wrote `bench.json` still gives the runs it finished: its folder's
`runs/ROW/seedK/` with a `summary.json` are read as the bench reads them (the settings then come
from the other benches given). Runs that refused their budget stay named under "refused".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_sel.bench.memory import run_name, run_result, write_outputs

# What must agree between benches merged (everything but the seeds, the results and the time taken).
SETTINGS = ("suite", "dataset", "checkpoint", "model", "subset", "test_subset", "epochs", "lr", "batch_size",
            "val_subset", "scenario", "fractions", "planner_only", "methods", "full_ft_counted_mb", "budgets_mb",
            "input_shape", "fits", "own_process")


def finished_runs(folder: Path, keys: list[str], full_mb: float, own_process: bool) -> dict:
    """The runs a stopped bench finished, row by row."""
    results: dict = {k: [] for k in keys}
    for key in keys:
        for run_dir in sorted((folder / "runs" / run_name(key)).glob("seed*")):
            if (run_dir / "summary.json").is_file():
                results[key].append(run_result(run_dir, int(run_dir.name[4:]), full_mb, own_process))
    return results


def merge(folders: list[Path]) -> dict:
    complete = [json.loads((f / "bench.json").read_text()) for f in folders if (f / "bench.json").is_file()]
    if not complete:
        raise SystemExit("merge_bench_memory: at least one folder needs its bench.json (the settings)")
    first = complete[0]
    for other in complete[1:]:
        differ = [k for k in SETTINGS if other.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"merge_bench_memory: the benches differ in {', '.join(differ)}")
    results: dict = {k: [] for k in first["results"]}
    refused: dict = {}
    wall = 0.0
    for folder in folders:
        if (folder / "bench.json").is_file():
            bench = json.loads((folder / "bench.json").read_text())
            part, wall = bench["results"], wall + bench["wall_s"]
            for key, rows in (bench.get("refused") or {}).items():
                refused.setdefault(key, []).extend(rows)
        else:
            part = finished_runs(folder, list(first["results"]), first["full_ft_counted_mb"], first["own_process"])
        for key, rows in part.items():
            seen = {r["seed"] for r in results[key]}
            clash = [r["seed"] for r in rows if r["seed"] in seen]
            if clash:
                raise SystemExit(f"merge_bench_memory: seed {clash[0]} of {key} is in more than one bench")
            results[key] += rows
    # Only seeds every row ran are paired: a run that refused its budget counts as run (it is in no mean).
    seeds = sorted(set.intersection(*({r["seed"] for r in rows + refused.get(k, [])} for k, rows in results.items())))
    results = {k: sorted((r for r in rows if r["seed"] in seeds), key=lambda r: r["seed"]) for k, rows in results.items()}
    refused = {k: sorted((r for r in rows if r["seed"] in seeds), key=lambda r: r["seed"]) for k, rows in refused.items()}
    energy = sorted({r.get("energy_method") for rows in results.values() for r in rows} - {None})
    return {**{k: first[k] for k in SETTINGS if k in first}, "seeds": seeds, "results": results, "refused": refused,
            "wall_s": wall, "energy_methods": energy, "merged_from": [str(f) for f in folders]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out in args.folders:
        raise SystemExit("merge_bench_memory: --out is one of the benches merged")
    bench = merge(args.folders)
    args.out.mkdir(parents=True, exist_ok=True)
    written = write_outputs(bench, args.out)
    print(written["table"])
    print(f"merged {len(args.folders)} benches: seeds {bench['seeds']}; wrote {args.out / 'table.md'}, "
          f"{args.out / 'bench.json'}, {written['figure']}, {args.out / 'report.html'}")


if __name__ == "__main__":
    main()
