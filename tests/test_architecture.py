"""The layout is the pipeline: imports flow one way (data → tasks → backends → judges →
calibrate → report → export → pipeline → cli), nothing imports the CLI, no module imports
another that imports it back, and importing judgecal changes nothing about the process."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "judgecal"

# A package may import its own modules, the utilities, and packages of a lower rank.
RANKS = {
    "signatures": 0,
    "data": 1,
    "stats": 2,
    "tasks": 2,
    "backends": 3,
    "judges": 4,
    "calibrate": 5,
    "report": 6,
    "export": 7,
    "pipeline": 8,
    "cli": 9,
}
UTILITIES = {"workspace", "redact", "progress"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        name = ".".join(p for p in parts if p != "__init__")
        found[name] = path
    return found


def judgecal_imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules of judgecal a file imports (relative to the package), leaving out imports
    that exist only for type checkers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and not (top_level_only and nested):
            if node.module == "judgecal":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("judgecal."):
                found.add(node.module.removeprefix("judgecal."))
        if isinstance(node, ast.Import) and not (top_level_only and nested):
            found.update(a.name.removeprefix("judgecal.") for a in node.names if a.name.startswith("judgecal."))
        for child in ast.iter_child_nodes(node):
            visit(child, nested or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))

    visit(tree, False)
    return found


def package_of(module: str) -> str:
    return module.split(".")[0]


def test_every_module_belongs_to_a_ranked_package_or_is_a_utility() -> None:
    unknown = {m for m in modules() if package_of(m) not in RANKS and m not in UTILITIES}
    assert not unknown


def test_imports_flow_one_way() -> None:
    wrong = []
    for module, path in modules().items():
        source = package_of(module)
        for imported in judgecal_imports(path, top_level_only=False):
            target = package_of(imported)
            if target == source or imported in UTILITIES or target in UTILITIES:
                continue
            if source in UTILITIES:
                wrong.append(f"utility {module} imports {imported}")
            elif RANKS[target] >= RANKS[source]:
                wrong.append(f"{module} ({source}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_command_line() -> None:
    assert not [m for m, p in modules().items() if m != "cli" and "cli" in judgecal_imports(p, top_level_only=False)]


def test_no_import_cycles() -> None:
    known = modules()
    graph = {m: {i for i in judgecal_imports(p, top_level_only=True) if i in known} for m, p in known.items()}
    cycles = []
    state: dict[str, int] = {}

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                walk(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "\n".join(cycles)


def test_importing_every_module_leaves_the_environment_alone(tmp_path: Path) -> None:
    names = sorted(f"judgecal.{m}" for m in modules() if m != "export.mlflow_model")
    code = (
        "import importlib, json, os\n"
        "import matplotlib\n"
        "backend = matplotlib.get_backend()\n"
        "before = dict(os.environ)\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "after = dict(os.environ)\n"
        "changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))\n"
        "print(json.dumps({'environment': changed, 'backend': [backend, matplotlib.get_backend()]}))\n"
    )
    # A backend the plots do not use, so that switching it on import shows.
    environment = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Only the OpenMP runtime that scikit-learn loads sets variables (KMP_*) on import.
    assert not {name for name in result["environment"] if not name.startswith("KMP_")}
    assert result["backend"] == ["svg", "svg"], "importing judgecal changed matplotlib's backend"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / ".cache").exists()


def test_fitted_judges_import_neither_rich_nor_mlflow() -> None:
    """The fitted-judge classes are domain code: progress bars and tracking are adapters
    the CLI and the pipeline bring."""
    code = (
        "import json, sys\n"
        "import judgecal.judges.fitted, judgecal.judges.program, judgecal.calibrate.trained\n"
        "print(json.dumps(sorted(m for m in ('rich', 'mlflow') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
