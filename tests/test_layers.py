"""Imports run one way. Every module of edge_sel sits in a layer and imports only from its own layer
or lower ones, and no modules import each other in a circle. Imports inside functions count too;
only the command line may import from any layer."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edge_sel"
MAX_LINES = 400

# Highest first. A module takes the layer of the longest name listed that it is, or lies under
# (the package itself, "edge_sel", covers only edge_sel/__init__.py: a new top-level module needs a
# line here); every `cli` module (edge_sel/*/cli.py) is command line.
LAYERS = [
    ("command line", ["edge_sel.cli", "edge_sel.cli_base", "edge_sel.cli_options", "edge_sel.cli_interrupts",
                      "edge_sel.__main__", "edge_sel.api", "edge_sel.option_names",
                      "edge_sel.demo", "edge_sel.cli_monitor", "edge_sel.cli_deployed", "edge_sel.cli_config",
                      "edge_sel.cli_data", "edge_sel.cli_promote", "edge_sel.bench.cli_common",
                      "edge_sel.bench.cli_lifelong", "edge_sel.bench.cli_memory", "edge_sel.bench.cli_transfer"]),
    ("bench, report, export, fleet, profiles", ["edge_sel.bench", "edge_sel.report", "edge_sel.export",
                                                "edge_sel.fleet", "edge_sel.profiles"]),
    # The engine's rooms, highest first: a device's nights, runs started and resumed, the training
    # loop, the machine it runs on, the levers against forgetting, evaluation; fault points under all.
    ("engine: night", ["edge_sel.engine.night"]),
    ("engine: runs", ["edge_sel.engine.runs"]),
    ("engine: loop", ["edge_sel.engine.loop"]),
    ("engine: machine", ["edge_sel.engine.machine"]),
    ("engine: levers", ["edge_sel.engine.levers"]),
    ("engine: evaluation", ["edge_sel.engine.evaluation"]),
    ("engine: fault points", ["edge_sel.engine"]),
    ("predict", ["edge_sel.predict"]),
    ("backends", ["edge_sel.backends"]),
    ("methods", ["edge_sel.methods"]),
    ("data, models, energy", ["edge_sel.data", "edge_sel.models", "edge_sel.energy"]),
    ("core", ["edge_sel", "edge_sel.core", "edge_sel.config", "edge_sel.errors", "edge_sel.device_caps",
              "edge_sel.threads", "edge_sel.huge_pages", "edge_sel.version"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> int:
    if module.rpartition(".")[2] == "cli":
        return 0
    best = max(((len(name), rank) for rank, (_, names) in enumerate(LAYERS) for name in names
                if module == name or (module.startswith(name + ".") and name != "edge_sel")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best[1]


def imports(module: str, path: Path, known: dict) -> list[tuple[str, int]]:
    """(imported edge_sel module, line): `from a.b import c` names a.b.c when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                  # relative: from the package, up level - 1
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + [base] if base else parts)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.append((name, node.lineno))
    return found


def test_imports_run_one_way_and_in_no_circle():
    known = modules()
    graph = {m: imports(m, p, known) for m, p in known.items()}
    upward = sorted({f"{known[m].relative_to(PACKAGE.parent)}:{line} imports {target}: {LAYERS[layer(m)][0]} "
                     f"may not import from {LAYERS[layer(target)][0]}, a higher layer"
                     for m, targets in graph.items() for target, line in targets if 0 < layer(m) and layer(target) < layer(m)})
    assert not upward, "upward imports:\n" + "\n".join(upward)
    done, cycles = set(), []

    def visit(m, path):
        if m in path:
            cycles.append(" -> ".join(path[path.index(m):] + [m]))   # each cycle once: its nodes are then done
            return
        if m not in done:
            for target, _ in graph[m]:
                visit(target, path + [m])
            done.add(m)
    for m in graph:
        visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_nothing_below_the_command_line_imports_the_package_face():
    """edge_sel/__init__.py hands out the Python API; the version lives in edge_sel/version.py."""
    known = modules()
    found = sorted(f"{known[m].relative_to(PACKAGE.parent)}:{line}" for m, p in known.items() if layer(m) > 0
                   for target, line in imports(m, p, known) if target == "edge_sel")
    assert found == []


def test_engine_modules_hold_one_job_each():
    """An engine module is at most MAX_LINES lines, or its docstring says why it is longer ("longer
    than ...: ..."), so a room's files stay readable one at a time."""
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for m, p in modules().items() if m.startswith("edge_sel.engine")
            and (n := len(p.read_text().splitlines())) > MAX_LINES
            and "longer than" not in (ast.get_docstring(ast.parse(p.read_text())) or "").lower()]
    assert long == [], "split these, or say at the top why they are long:\n" + "\n".join(long)


def rooms() -> list[tuple[str, int, int, str, int, int]]:
    """Per layer: (name, files, lines, largest module, its lines, imports from a higher layer)."""
    known = modules()
    rows = []
    for rank, (name, _) in enumerate(LAYERS):
        members = {m: p for m, p in known.items() if layer(m) == rank}
        if not members:
            continue
        sizes = {m: len(p.read_text().splitlines()) for m, p in members.items()}
        largest = max(sizes, key=sizes.get)
        upward = sum(1 for m, p in members.items() for target, _ in imports(m, p, known)
                     if rank > 0 and layer(target) < rank)
        rows.append((name, len(members), sum(sizes.values()), largest, sizes[largest], upward))
    return rows


if __name__ == "__main__":      # python tests/test_layers.py: the rooms, their size and their imports upward
    print(f"{'layer':40s} {'files':>5s} {'lines':>6s}  largest module")
    for name, files, lines, largest, size, upward in rooms():
        print(f"{name:40s} {files:5d} {lines:6d}  {largest} ({size}){f'  {upward} upward' if upward else ''}")
