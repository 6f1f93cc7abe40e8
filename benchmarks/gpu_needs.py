"""What the GPU machine must have for benchmarks/gpu_reference.sh and benchmarks/gpu_transfer.sh, from the code
itself: the distributions behind every import of edge_sel (those of its base dependencies; an
extra's, as flwr or onnxruntime, only where its command runs), and of the tests and benchmarks/ scripts
the two scripts run, set against GPU_IMAGE_HAS (what the machine's image brings) and GPU_WHEELS
(what gpu_prepare.sh carries and the install stages install), both in benchmarks/gpu_common.sh.

    python benchmarks/gpu_needs.py                 exit 1 naming each needed distribution neither brings
    python benchmarks/gpu_needs.py --wheels DIR    also: DIR holds a wheel for every GPU_WHEELS entry

An import inside `try: ... except ImportError` is optional and not counted; one inside a function is
(a test's only at its module's top: one inside a test function is that test's, which skips without it).
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:         # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("benchmarks/gpu_reference.sh", "benchmarks/gpu_transfer.sh")
OPTIONAL_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception"}


def norm(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503), without a version or marker."""
    name = re.split(r"[<>=!~;\[ ]", name.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _guarded(parents: list[ast.AST]) -> bool:
    for node in parents:
        for handler in getattr(node, "handlers", []) if isinstance(node, ast.Try) else []:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            if handler.type is None or any(isinstance(k, ast.Name) and k.id in OPTIONAL_ERRORS for k in kinds):
                return True
    return False


def imports(path: Path, lazy: bool = True) -> set[str]:
    """Top-level names of the absolute imports in one file that are not guarded against ImportError;
    `lazy`: those inside functions too."""
    found: set[str] = set()

    def walk(node: ast.AST, parents: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            if not lazy and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                names = [child.module]
            else:
                names = []
            if names and not _guarded(parents):
                found.update(n.split(".")[0] for n in names)
            walk(child, parents + [child])

    walk(ast.parse(path.read_text(), str(path)), [])
    return found - set(sys.stdlib_module_names) - {"__future__"}


def closure(files: list[Path], local: Path, lazy: bool = True) -> set[str]:
    """Third-party imports of `files` and of the modules they import from the folder `local`."""
    seen, todo, third = set(), list(files), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path, lazy):
            if (local / f"{name}.py").is_file():
                todo.append(local / f"{name}.py")
            else:
                third.add(name)
    return third


def distribution(module: str, known: dict[str, list[str]]) -> str:
    return norm(known.get(module, [module])[0])


def base_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {norm(d) for d in project["dependencies"]}


def bash_list(name: str) -> list[str]:
    out = subprocess.run(["bash", "-c", f'source benchmarks/gpu_common.sh && printf "%s\\n" "${{{name}[@]}}"'],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


@functools.lru_cache(maxsize=1)
def needed() -> dict[str, frozenset[str]]:
    """Every distribution the scripts' runs import, with what imports it."""
    known = packages_distributions()
    base = base_dependencies()
    why: dict[str, set[str]] = {}
    package = sorted((REPO / "edge_sel").rglob("*.py"))
    for module in closure(package, REPO / "edge_sel"):
        dist = distribution(module, known)
        if dist in base:        # an extra's (flwr, onnxruntime, torchvision) is only for its own command
            why.setdefault(dist, set()).add(f"edge_sel imports {module}")
    text = "\n".join((REPO / s).read_text() for s in SCRIPTS)
    tests = sorted({REPO / t for t in re.findall(r"tests/test_\w+\.py", text)} | {REPO / "tests/conftest.py"})
    scripts = sorted(REPO / t for t in set(re.findall(r"benchmarks/\w+\.py", text)))
    # A test's import inside a function belongs to a test that skips without it (ONNX Runtime's).
    for module in closure(tests, REPO / "tests", lazy=False):
        if module != "edge_sel":
            why.setdefault(distribution(module, known), set()).add(f"the tests import {module}")
    for module in closure(scripts, REPO / "benchmarks"):
        if module != "edge_sel":
            why.setdefault(distribution(module, known), set()).add(f"benchmarks/ imports {module}")
    if re.search(r"-m pytest\b", text):
        why.setdefault("pytest", set()).add("the scripts run python -m pytest")
    return {dist: frozenset(w) for dist, w in why.items()}


def missing(wheels: list[str], image: list[str]) -> dict[str, frozenset[str]]:
    have = {norm(w) for w in wheels} | {norm(i) for i in image}
    return {dist: why for dist, why in needed().items() if dist not in have}


def main() -> int:
    args = sys.argv[1:]
    wheels, image = bash_list("GPU_WHEELS"), bash_list("GPU_IMAGE_HAS")
    lost = missing(wheels, image)
    for dist, why in sorted(lost.items()):
        print(f"gpu_needs: {dist} is needed ({'; '.join(sorted(why))}) but neither GPU_IMAGE_HAS nor GPU_WHEELS "
              "in benchmarks/gpu_common.sh has it", file=sys.stderr)
    if args[:1] == ["--wheels"] and len(args) == 2:
        carried = {norm(p.name.split("-")[0]) for p in Path(args[1]).glob("*.whl")}
        for w in wheels:
            if norm(w) not in carried:
                lost[norm(w)] = frozenset()
                print(f"gpu_needs: {args[1]} holds no wheel of {norm(w)}", file=sys.stderr)
    elif args:
        print(__doc__, file=sys.stderr)
        return 2
    if not lost:
        print(f"gpu_needs: every distribution the GPU scripts import is in the image or carried "
              f"({', '.join(sorted(needed()))})")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
