"""Same records before and after a change to the code's structure: one seeded run per strategy,
preset and updater, made by two source trees of edge-sel, their records compared key by key.

    python tools/compare_records.py --before 029d1d0 --out /tmp/compare

`--before`/`--after` are git revisions (checked out as temporary worktrees) or source directories;
`--after` defaults to this checkout. Each tree runs `python -m edge_sel` with PYTHONPATH set to it,
one thread (OMP_NUM_THREADS and EDGE_SEL_THREADS: trees that count the free CPUs would otherwise
choose by the load), its own layout cache, contiguous layout, a fixed evaluation batch and fp32 where
the tree has --precision (so no timing decides anything). The after tree pretrains one warmup checkpoint on digits; both trees pretrain
too (their records are compared) and every fine-tune of both starts from the after tree's warmup.

Measured fields (wall time, joules, power, temperature, memory) differ between any two runs and are
left out; everything counted or computed (samples, FLOPs, losses, accuracies, embarrassment, stop
reasons) must be equal, floats to 1e-9 relative. Exit 1 on any difference, each one printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edge_sel.engine.night.journal import last_decision

ROOT = Path(__file__).resolve().parents[1]
MEASURED_SUFFIXES = ("_s", "_j", "_w", "_c", "_mb")
MEASURED_KEYS = {"energy_coverage", "energy_by_component", "energy_samples", "samples_per_s", "probe_check",
                 "other_load_cpus", "provisional", "ratio"}
COMMON = ["--dataset", "digits", "--seed", "3", "--batch-size", "64", "--quiet",
          "--memory-format", "contiguous", "--eval-batch-size", "256", "--meter", "estimate"]

# One fine-tune per strategy, per published preset and per updater (lottery needs a mask from
# prune-and-rewind and is exercised by `edge-sel bench`, not here).
RUNS = {
    "dense": ["--strategy", "dense"],
    "sel": ["--strategy", "sel"],
    "sundew": ["--strategy", "sundew", "--target-activation", "0.4"],
    "random": ["--strategy", "random", "--target-activation", "0.4"],
    "infobatch": ["--strategy", "infobatch"],
    "dihcl": ["--strategy", "dihcl", "--dih-warm", "1"],
    "sundew-learn": ["--strategy", "sundew", "--target-activation", "0.4", "--significance", "learnability",
                     "--unseen", "neutral"],
    "dense+sundew-gate": ["--strategy", "dense", "--gate", "sundew", "--target-activation", "0.5"],
    "preset-sel-95": ["--preset", "sel-95"],
    "preset-warmup-sel": ["--preset", "warmup-sel"],
    "preset-sel-v3": ["--preset", "sel-v3"],
    "preset-ast-prod": ["--preset", "ast-prod"],
    "preset-ast-two": ["--preset", "ast-two"],
    "preset-adapt": ["--preset", "adapt"],
    "sparsity-mask": ["--strategy", "dense", "--sparsity", "mask"],
    "sparsity-layers": ["--strategy", "dense", "--sparsity", "layers", "--probe-every", "5"],
    "sparsity-bn-affine": ["--strategy", "dense", "--sparsity", "bn-affine"],
    "sparsity-rgn": ["--strategy", "dense", "--sparsity", "rgn"],
    "bn-adapt+shift": ["--strategy", "dense", "--bn-adapt", "200", "--shift", "label-noise=0.2"],
    "epochs0-bn-adapt": ["--strategy", "dense", "--bn-adapt", "200", "--epochs", "0"],
    # The life's levers and the bank: anchors replayed, the Fisher penalty, the guard and the reset,
    # statistics per condition on a shifted camera, a stream of frames gated with novelty.
    "levers": ["--strategy", "dense", "--replay", "0.2", "--ewc", "10", "--max-forgetting", "3",
               "--reset-forgetting", "5", "--bn-adapt", "100", "--bn-anchor-share", "0.5"],
    "bank": ["--strategy", "dense", "--bn-conditions", "2", "--shift", "corrupt=contrast:3"],
    "stream": ["--strategy", "sundew", "--target-activation", "0.2", "--novelty", "0.5", "--shift", "frames=4"],
}
# Two nights of a device (`edge-sel night`): a shifted camera, then a clean one; each night's
# records and promote's decision are compared.
NIGHTS = [["--shift", "corrupt=contrast:3", "--shard", "1/2", "--subset", "400"],
          ["--shard", "0/2", "--subset", "400"]]
NIGHT_COMMON = ["--dataset", "digits", "--seed", "3", "--batch-size", "64", "--quiet", "--epochs", "2",
                "--memory-format", "contiguous", "--eval-batch-size", "256", "--meter", "estimate"]
EPOCHS = ["--epochs", "3"]


def source_tree(spec: str, scratch: Path, name: str) -> Path:
    """A directory holding the edge_sel package: as given, or a worktree of a git revision."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    tree = scratch / name
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), spec], check=True,
                   capture_output=True)
    return tree


def fixed_precision(tree: Path) -> list[str]:
    """fp32 for trees whose precision is otherwise measured (older trees ran fp32 on CPUs anyway)."""
    options = tree / "edge_sel" / "cli_options.py"
    return ["--precision", "fp32"] if options.is_file() and '"--precision"' in options.read_text() else []


def edge_sel(tree: Path, args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", EDGE_SEL_THREADS="1", EDGE_SEL_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "edge_sel", *args, *fixed_precision(tree)], env=env,
                          capture_output=True, text=True, cwd=tree)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def measured(key: str) -> bool:
    return key in MEASURED_KEYS or key.endswith(MEASURED_SUFFIXES)


def differences(before: list[dict], after: list[dict]) -> list[str]:
    if len(before) != len(after):
        return [f"{len(before)} records before, {len(after)} after"]
    found = []
    for i, (b, a) in enumerate(zip(before, after)):
        for key in sorted(set(b) | set(a)):
            if measured(key):
                continue
            if key not in b or key not in a:
                found.append(f"record {i}: {key} only {'after' if key in a else 'before'}")
                continue
            x, y = b[key], a[key]
            same = x == y or (isinstance(x, float) and isinstance(y, float)
                              and (math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) or (x != x and y != y)))
            if not same:
                found.append(f"record {i}: {key} {x!r} before, {y!r} after")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision or source directory")
    parser.add_argument("--after", default=str(ROOT), help="git revision or source directory [this checkout]")
    parser.add_argument("--out", type=Path, required=True, help="where the runs go (created)")
    parser.add_argument("--only", default="", help="comma-separated run names, `night` among them (default: all)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or [*RUNS, "night"]
    unknown = sorted(set(names) - set(RUNS) - {"night"})
    if unknown:
        parser.error(f"--only: unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}, night")
    if args.out.exists():
        parser.error(f"--out {args.out}: already exists")
    args.out.mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="edge-sel-compare-"))
    trees = {"before": source_tree(args.before, scratch, "before"), "after": source_tree(args.after, scratch, "after")}

    try:
        failed = compare(trees, names, args.out)
    finally:   # worktrees made here go, whatever happened
        for tree in trees.values():
            if tree.parent == scratch:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    compared = len(names) + 1 + (len(NIGHTS) - 1 if "night" in names else 0)
    print(f"{compared - failed} of {compared} the same")
    return 1 if failed else 0


def compare(trees: dict, names: list[str], out: Path) -> int:
    """Number of runs that differ or failed, each reported as it ends."""
    failed = 0
    warm = {}
    for side, tree in trees.items():
        warm[side] = out / side / "warmup"
        done = edge_sel(tree, ["pretrain", "--model", "edgecnn", *COMMON, "--shard", "0/2", "--epochs", "2",
                               "--out", str(warm[side])], out / side / "cache")
        if done.returncode:
            print(f"{side}: pretrain failed:\n{done.stderr[-3000:]}")
            return len(names) + 1
    found = differences(records(warm["before"]), records(warm["after"]))
    print(f"{'pretrain':22s} {'same' if not found else 'DIFFERENT'}")
    failed += bool(found)
    for line in found:
        print("    " + line)

    for name in names:
        if name == "night":
            failed += compare_nights(trees, warm["after"], out)
            continue
        runs = {}
        for side, tree in trees.items():
            runs[side] = out / side / name
            extra = RUNS[name] if "--epochs" in RUNS[name] else RUNS[name] + EPOCHS
            done = edge_sel(tree, ["finetune", "--checkpoint", str(warm["after"]), *COMMON, "--shard", "1/2",
                                   *extra, "--out", str(runs[side])], out / side / "cache")
            if done.returncode or not (runs[side] / "metrics.jsonl").is_file():
                print(f"{name:22s} {side} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
                break
        else:
            found = differences(records(runs["before"]), records(runs["after"]))
            n = len(records(runs["after"]))
            print(f"{name:22s} {'same' if not found else 'DIFFERENT'} ({n} records)")
            for line in found:
                print("    " + line)
            failed += bool(found)
            continue
        failed += 1
    return failed


def flat(decision: dict) -> dict:
    """promote's decision about a run without where and when, its evaluation's fields at the top
    (measured ones drop)."""
    out = {k: v for k, v in decision.items() if k not in ("run", "deployed", "when", "version", "evaluation")}
    out.update({f"evaluation.{k}": v for k, v in (decision.get("evaluation") or {}).items()})
    return out


def compare_nights(trees: dict, warmup: Path, out: Path) -> int:
    """How many nights differ (all when one failed): each tree lives two nights in a home of its own that
    starts from the same warmup; runs are taken in the order they were made."""
    nights = {}
    for side, tree in trees.items():
        home = out / side / "home"
        (home / "checkpoints").mkdir(parents=True)
        shutil.copytree(warmup, home / "checkpoints" / "warmup")
        for i, night in enumerate(NIGHTS):
            done = edge_sel(tree, ["night", "--home", str(home), *NIGHT_COMMON, *night], out / side / "cache")
            if done.returncode:
                print(f"{'night ' + str(i):22s} {side} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
                return len(NIGHTS)
        nights[side] = sorted(p for p in (home / "runs").iterdir() if (p / "metrics.jsonl").is_file())
    failed = 0
    for i, (before, after) in enumerate(zip(nights["before"], nights["after"])):
        found = differences(records(before), records(after))
        decisions = [flat(last_decision(run) or {}) for run in (before, after)]
        found += [f"promote's decision: {line}" for line in differences(decisions[:1], decisions[1:])]
        print(f"{'night ' + str(i):22s} {'same' if not found else 'DIFFERENT'} ({len(records(after))} records)")
        for line in found:
            print("    " + line)
        failed += bool(found)
    if len(nights["before"]) != len(NIGHTS) or len(nights["after"]) != len(NIGHTS):
        print(f"nights: {len(nights['before'])} runs before, {len(nights['after'])} after")
        failed = len(NIGHTS)
    return failed


if __name__ == "__main__":
    sys.exit(main())
