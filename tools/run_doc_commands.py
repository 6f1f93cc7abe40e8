"""Run the getting-started tour's and every docs page's `bash` command blocks, as written, in order,
and print each command's exit status and time, then pages passed/failed. The tour
(docs/getting-started.md) runs first, in a fresh temporary directory; each page then runs in a copy
of what the tour left (the pages build on its ckpt/digits and runs/, and one page's outputs never
stand in another's way), except a page that pretrains the tour's warmup itself (it is a tour: it
starts from an empty directory).

Commands that cannot run on a fresh clone of a laptop are skipped with the reason: CIFAR-10 or an
image folder that is not there, a placeholder (`...`, `WARMUP`, `[--option]`), a download or an
install, real fleet servers, a desktop GPU. A page marks any other command with a comment on the
command's line, `# needs: REASON`, to skip it.

    python tools/run_doc_commands.py                 # every page
    python tools/run_doc_commands.py README.md docs/how-to/*.md --keep DIR
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

REPO = Path(__file__).resolve().parents[1]
TOUR = REPO / "docs" / "getting-started.md"

# (pattern, reason): the first that matches a command skips it.
SKIP_RULES = [
    (r"^make (demo|test)\b", "the quick start: installs and runs the demo or the whole suite (CI runs both)"),
    (r"\bcurl\b|\bpip install\b", "downloads or installs from outside"),
    (r"--dataset cifar10\b|cifar10-jpeg|ckpt/cifar|--checkpoint (warm|WARMUP)\b", "needs CIFAR-10"),
    (r"\bbench reference\b", "needs a desktop GPU (resnet18_cifar on CIFAR-10)"),
    (r"\bfleet run\b", "needs a real SuperLink and devices"),
    (r"\.\.\.|\[--|\bWARMUP\b|\bPATH/|folder:PATH\b|folder:data/|folder:/srv", "a placeholder, not a command to run as written"),
    (r"\bedge-sel monitor\b(?!.*--samples)", "a live monitor: it runs until Ctrl-C"),
    (r"/var/lib/edge-sel|/etc/edge-sel|\bsystemctl\b", "a device's installed service (deploy/), not a fresh clone"),
    (r"\bnice -n \d+ python benchmarks/|python3? benchmarks/", "a benchmark script of benchmarks/ (minutes to hours)"),
    (r"\bbash benchmarks/gpu_", "a GPU script of benchmarks/: the GPU machine, with gpu-carry/ built"),
    (r"\btorchrun\b|torch\.distributed\.run", "two processes of distributed pretraining (minutes on 2 cores)"),
]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[tuple[str, str | None]]:
    """(command, needs) per command of a block: continuation lines joined, comment lines dropped;
    `needs` is the reason a `# needs: ...` comment on the command gives, else None."""
    out, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        needs = re.search(r"#\s*needs:\s*(.+)$", full)
        out.append((full.strip(), needs.group(1).strip() if needs else None))
    return out


def skip_reason(command: str, needs: str | None) -> str | None:
    if needs:
        return needs
    bare = re.sub(r"\s+#.*$", "", command)
    return next((reason for pattern, reason in SKIP_RULES if re.search(pattern, bare)), None)


def page_commands(path: Path) -> list[tuple[str, str | None]]:
    return [c for block in bash_blocks(path.read_text()) for c in commands(block)]


def is_tour(path: Path) -> bool:
    """A page that pretrains the tour's warmup itself (its first command to run does)."""
    runnable = [c for c, needs in page_commands(path) if not skip_reason(c, needs)]
    return bool(runnable) and "--out ckpt/digits" in runnable[0]


def run_page(path: Path, workdir: Path, env: dict, timeout: float) -> tuple[int, int, int]:
    """(passed, failed, skipped) commands of one page, each printed with its exit status and time."""
    passed = failed = skipped = 0
    print(f"== {path.relative_to(REPO)}", flush=True)
    for command, needs in page_commands(path):
        reason = skip_reason(command, needs)
        if reason:
            print(f"   skip   {command[:100]}\n          ({reason})", flush=True)
            skipped += 1
            continue
        t0 = time.perf_counter()
        try:
            done = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            rc, tail = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-3:]
        except subprocess.TimeoutExpired:
            rc, tail = "timeout", []
        seconds = time.perf_counter() - t0
        print(f"   rc={rc!s:<4} {seconds:6.1f} s  {command[:100]}", flush=True)
        if rc != 0:
            failed += 1
            for line in tail:
                print(f"          | {line[:160]}", flush=True)
        else:
            passed += 1
    return passed, failed, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to run (default: README.md, then docs/*.md)")
    parser.add_argument("--keep", type=Path, help="run in this directory (made fresh) instead of a temporary one")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command")
    args = parser.parse_args(argv)
    pages = [p.resolve() for p in args.pages] or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                                                  *sorted((REPO / "docs" / "how-to").glob("*.md"))]
    # The interpreter's own scripts (edge-sel) come first, as in the virtual environment it runs in.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    with tempfile.TemporaryDirectory(prefix="edge-sel-docs-") as tmp:
        root = Path(tmp)
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            args.keep.mkdir(parents=True)
            root = args.keep
        tour = root / "tour"
        tour.mkdir()
        # The tour first, whether or not it was named: the other pages build on what it leaves.
        results = {TOUR: run_page(TOUR, tour, env, args.timeout)}
        for page in (p for p in pages if p != TOUR and bash_blocks(p.read_text())):
            workdir = root / "-".join(page.relative_to(REPO).with_suffix("").parts)
            if is_tour(page):
                workdir.mkdir()
            else:
                shutil.copytree(tour, workdir, symlinks=True)
            results[page] = run_page(page, workdir, env, args.timeout)
    print("\npage                                   passed failed skipped")
    for page, (ok, bad, skip) in results.items():
        print(f"{str(page.relative_to(REPO)):38s} {ok:6d} {bad:6d} {skip:7d}  {'FAILED' if bad else 'passed'}")
    failed_pages = [p for p, (_, bad, _) in results.items() if bad]
    print(f"\n{len(results) - len(failed_pages)} pages passed, {len(failed_pages)} failed")
    return 1 if failed_pages else 0


if __name__ == "__main__":
    sys.exit(main())
