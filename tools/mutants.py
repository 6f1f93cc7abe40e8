"""Mutation testing of the device-side modules with mutmut: each module with the test files that
cover it, so one module's run fits in minutes on 2 cores.

    python tools/mutants.py deployed_swap             # one module (names below)
    python tools/mutants.py --list                    # the modules and their tests
    make mutants                                      # every module, one after another (long)

Each run works in a scratch copy of the repository (mutmut writes its mutated tree under
`mutants/` there), so the checkout is never touched. Commands the tests start as subprocesses
(`python -m edge_sel ...`) import the mutated tree too (PYTHONPATH), so a mutant that only a
command-line test sees is still seen. The result goes to tools/mutation-results/MODULE.txt: killed / total,
then every surviving mutant with its diff, to be killed by a stronger test or listed in
tools/mutation-results/equivalent.txt with the reason it cannot change behaviour.

How to read it: "killed" mutants made a test fail; "survived" ones did not (a line no test
checks); "timeout" (the mutant looped) and "segfault" (the test process died of a signal: a
mutated fault point that SIGKILLs) count as killed; "no tests" means no test of the selection
ran the mutated function at all.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tools" / "mutation-results"

# module (edge_sel/...) -> the test files that cover it
MODULES = {
    "deployed_swap": ("edge_sel/engine/night/deployed_swap.py", ["tests/test_deployed_swap.py", "tests/test_trust.py",
                                                                 "tests/test_promote_rules.py"]),
    "promote": ("edge_sel/engine/night/promote.py", ["tests/test_promote_rules.py"]),
    "outputs": ("edge_sel/core/outputs.py", ["tests/test_output_rules.py"]),
    "lock_file": ("edge_sel/core/lock_file.py", ["tests/test_lock_file.py", "tests/test_deployed_swap.py",
                                                 "tests/test_output_rules.py"]),
    "bn_bank": ("edge_sel/engine/evaluation/bn_bank.py", ["tests/test_bank_rules.py"]),
    "bank_file": ("edge_sel/core/bn_bank.py", ["tests/test_bank_file.py"]),
    "life": ("edge_sel/engine/night/life.py", ["tests/test_life_rules.py"]),
    "precision": ("edge_sel/engine/machine/precision.py", ["tests/test_precision_rules.py"]),
    "probe_cache": ("edge_sel/engine/machine/probe_cache.py", ["tests/test_probe_cache_rules.py", "tests/test_probes.py"]),
    "threads": ("edge_sel/threads.py", ["tests/test_thread_choice.py"]),
    "sundew": ("edge_sel/methods/select/sundew.py", ["tests/test_gating_control.py", "tests/test_gating_gates.py",
                                                 "tests/test_sundew_novelty.py"]),
    "novelty": ("edge_sel/methods/select/novelty.py", ["tests/test_novelty_prints.py"]),
    "levers": ("edge_sel/engine/levers/levers.py", ["tests/test_lever_rules.py"]),
    "spec": ("edge_sel/models/spec.py", ["tests/test_model_spec.py"]),
    "trusted_files": ("edge_sel/models/trusted_files.py", ["tests/test_model_spec.py"]),
    "onnx_files": ("edge_sel/backends/onnx_files.py", ["tests/test_received_files.py"]),
    "conditions": ("edge_sel/predict/conditions.py", ["tests/test_condition_chooser.py"]),
    "predictor": ("edge_sel/predict/predictor.py", ["tests/test_predictor_device.py", "tests/test_device_inputs.py"]),
    "images": ("edge_sel/predict/images.py", ["tests/test_device_inputs.py", "tests/test_predictor_device.py"]),
    "predict_run": ("edge_sel/predict/run.py", ["tests/test_device_inputs.py"]),
    "ort_session": ("edge_sel/predict/ort_session.py", ["tests/test_ort_session.py", "tests/test_device_inputs.py",
                                                       "tests/test_thread_choice.py"]),
    "statistics": ("edge_sel/predict/statistics.py", ["tests/test_predictor_device.py", "tests/test_device_inputs.py"]),
    "predict_cli": ("edge_sel/predict/cli.py", ["tests/test_predict_cli.py", "tests/test_device_inputs.py"]),
    "export_artifacts": ("edge_sel/export/artifacts.py", ["tests/test_export_rules.py"]),
    "export_cli": ("edge_sel/export/cli.py", ["tests/test_export_rules.py"]),
    "exporter": ("edge_sel/export/exporter.py", ["tests/test_export_rules.py"]),
    "onnx_graph": ("edge_sel/export/onnx_graph.py", ["tests/test_export_rules.py"]),
}


def tracked_top_level() -> list[str]:
    """The repository's top-level files and folders (tests read some: the Dockerfile's sources, docs)."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return sorted({n.split("/")[0] for n in names})


def setup_cfg(module: str, tests: list[str]) -> str:
    others = [n for n in tracked_top_level() if n not in ("edge_sel", "tests", "setup.cfg", "pyproject.toml")]
    lines = ["[mutmut]", "source_paths=edge_sel", f"only_mutate={module}",
             "also_copy=\n" + "\n".join(f"    {n}" for n in others),
             "pytest_add_cli_args_test_selection=\n" + "\n".join(f"    {t}" for t in tests),
             "pytest_add_cli_args=\n    -p\n    no:cacheprovider\n    -q"]
    return "\n".join(lines) + "\n"


def run(name: str, workers: int) -> Path:
    module, tests = MODULES[name]
    missing = [p for p in [module, *tests] if not (ROOT / p).is_file()]
    if missing:
        sys.exit(f"mutants: {name}: missing {', '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix=f"mutants-{name}-"))
    try:
        for item in tracked_top_level():
            src = ROOT / item
            if src.is_dir():
                shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif src.is_file():
                shutil.copy2(src, work / item)
        (work / "setup.cfg").write_text(setup_cfg(module, tests))
        # The mutated tree must exist before Python starts: a path entry missing at start-up is
        # remembered as missing, and the tests would import the checkout instead.
        (work / "mutants").mkdir()
        env = {**os.environ, "PYTHONPATH": str(work / "mutants")}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(workers)], cwd=work, env=env,
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        results = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                                 capture_output=True, text=True).stdout
        report = summarise(name, module, tests, results, wall, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.txt"
    path.write_text(report)
    print(report.split("\n\n")[0])
    return path


def summarise(name, module, tests, results: str, wall: float, work: Path, env) -> str:
    status = {}
    for line in results.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    counts: dict = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    caught = ("killed", "timeout", "segfault")
    killed = sum(counts.get(k, 0) for k in caught)
    total = len(status)
    head = (f"{name}: {module}, tests {' '.join(tests)}\n"
            f"killed {killed} / {total} ({100 * killed / max(total, 1):.0f}%), "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; {wall:.0f} s")
    survivors = [m for m, s in status.items() if s not in caught]
    diffs = []
    for m in survivors:
        diff = subprocess.run([sys.executable, "-m", "mutmut", "show", m], cwd=work, env=env,
                              capture_output=True, text=True).stdout.strip()
        diffs.append(f"## {m} ({status[m]})\n{diff}")
    return head + "\n\n" + "\n\n".join(diffs) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help="names from --list (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    if a.list:
        for name, (module, tests) in MODULES.items():
            print(f"{name:14s} {module}  <- {' '.join(tests)}")
        return
    unknown = [m for m in a.modules if m not in MODULES]
    if unknown:
        sys.exit(f"mutants: unknown module {', '.join(unknown)} (see --list)")
    for name in a.modules or MODULES:
        run(name, a.workers)


if __name__ == "__main__":
    main()
