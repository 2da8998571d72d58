"""The layout is the pipeline: imports flow one way (data → tasks → backends → judges →
calibrate → report → export → pipeline → cli), nothing imports the CLI, no module imports
another that imports it back, importing judgecal changes nothing about the process, and no
module or function grows past what a reviewer can read."""

from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "judgecal"
# Where each part of the package lives: the top-level signatures/ folder installs as
# judgecal.signatures (see pyproject.toml).
FOLDERS = {"": PACKAGE, "signatures": ROOT / "signatures"}

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
UTILITIES = {"workspace", "redact", "progress", "artifacts"}
# A module or a function longer than these is split into named parts: a reviewer reads
# a function at once and a module in one sitting.
MODULE_MOST_LINES = 600
FUNCTION_MOST_LINES = 80


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of judgecal by its name inside the package (``report.plots``; a
    package by its folder, ``report``), the signatures folder included."""
    found = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [prefix, *path.relative_to(folder).with_suffix("").parts]
            name = ".".join(p for p in parts if p and p != "__init__")
            if name:
                found[name] = path
    return found


@functools.cache
def lazy_exports() -> dict[str, str]:
    """The module ``from judgecal import NAME`` loads, for each name judgecal/__init__.py
    exports lazily."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {name: where.removeprefix("judgecal.") for name, where in ast.literal_eval(node.value).items()}
    return {}


def judgecal_imports(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """The modules of judgecal that a module's source imports, named inside the package.

    ``from judgecal.report import plots`` is ``report.plots`` (the submodule, not the
    package); relative imports are resolved against the module's package; ``from judgecal
    import load_judge`` is the module the name is loaded from. Imports count wherever
    they sit, inside functions and under ``if TYPE_CHECKING:`` too: a type checker follows
    those, so two modules that name each other's types there are a cycle all the same. A
    name that is no module of judgecal comes back as written, so a check can report it."""
    known = modules()
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def resolve(base: str, name: str) -> str:
        full = f"{base}.{name}" if base else name
        if full in known:
            return full
        return base or lazy_exports().get(name, name)

    def base_of(node: ast.ImportFrom) -> str | None:
        if node.level:
            parts = package.split(".") if package else []
            if node.level - 1 > len(parts):
                return None
            parts = parts[: len(parts) - (node.level - 1)]
            return ".".join([*parts, *([node.module] if node.module else [])])
        if node.module == "judgecal":
            return ""
        if node.module and node.module.startswith("judgecal."):
            return node.module.removeprefix("judgecal.")
        return None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name.removeprefix("judgecal.") for a in node.names if a.name.startswith("judgecal."))
        elif isinstance(node, ast.ImportFrom) and (base := base_of(node)) is not None:
            found.update(resolve(base, alias.name) for alias in node.names if alias.name != "*")
            if base and any(alias.name == "*" for alias in node.names):
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def imports_of(module: str) -> set[str]:
    path = modules()[module]
    return judgecal_imports(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")


def package_of(module: str) -> str:
    return module.split(".")[0]


def test_imports_are_resolved_to_the_modules_they_load() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from judgecal.report import plots\n"
        "from . import records\n"
        "from .agreement import AgreementReport\n"
        "from ..judges.verdict import Verdict\n"
        "from judgecal import load_judge, stats\n"
        "import judgecal.data.rows\n"
        "if TYPE_CHECKING:\n"
        "    from judgecal.pipeline.config import ExperimentConfig\n"
        "def later():\n"
        "    from judgecal.judges import verifiers\n"
    )
    assert judgecal_imports("report.card", source) == {
        "report.plots",
        "report.records",
        "report.agreement",
        "judges.verdict",
        "pipeline.config",
        "export.flavor",
        "stats",
        "data.rows",
        "judges.verifiers",
    }
    assert judgecal_imports("report", "from . import plots\n", is_package=True) == {"report.plots"}
    assert judgecal_imports("cli", "from judgecal import no_such_thing\n") == {"no_such_thing"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_used(
    module: str, source: str, *, is_package: bool = False, elsewhere: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    """Private names (``_name``) a module takes from another module of judgecal: imported
    (``from judgecal.x import _y``, relative imports too), read off an imported module
    (``x._y``), or called on another class's objects (``judge._row``, when ``_row`` is
    defined in some other module of judgecal and not in this one; ``elsewhere`` maps such
    names to the modules defining them, judgecal's own by default). What one module shares
    with another has a public name and a docstring."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    found = []
    module_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("judgecal.") and alias.asname:
                    module_aliases.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            elif node.module == "judgecal" or (node.module or "").startswith("judgecal."):
                base = (node.module or "").removeprefix("judgecal").removeprefix(".")
            else:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                if full in modules():
                    module_aliases.add(alias.asname or alias.name)
                elif _is_private(alias.name) and base != module:
                    found.append(f"{module} imports {alias.name} from {base or 'judgecal'}")
    own = _private_names_defined(tree)
    elsewhere = defined_elsewhere(module) if elsewhere is None else elsewhere
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        receiver = node.value.id if isinstance(node.value, ast.Name) else None
        if receiver in module_aliases:
            found.append(f"{module} reads {receiver}.{node.attr}")
        elif receiver not in ("self", "cls") and node.attr in elsewhere and node.attr not in own:
            found.append(f"{module} uses {ast.unparse(node)}, private to {', '.join(elsewhere[node.attr])}")
    return found


def _private_names_defined(tree: ast.AST) -> set[str]:
    """Private functions, classes and attributes a module defines (``self._x = ...`` too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and _is_private(node.name):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_private(node.attr):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _is_private(node.id):
            names.add(node.id)
    return names


@functools.cache
def _private_definitions() -> dict[str, tuple[str, ...]]:
    """Each private name defined in judgecal, and the modules that define it."""
    where: dict[str, list[str]] = {}
    for module, path in modules().items():
        for name in _private_names_defined(ast.parse(path.read_text(encoding="utf-8"))):
            where.setdefault(name, []).append(module)
    return {name: tuple(sorted(found)) for name, found in where.items()}


def defined_elsewhere(module: str) -> dict[str, tuple[str, ...]]:
    """Private names other modules of judgecal define, by name."""
    return {
        name: tuple(m for m in found if m != module)
        for name, found in _private_definitions().items()
        if any(m != module for m in found)
    }


def test_private_names_are_found_however_they_are_taken() -> None:
    source = (
        "from judgecal.judges.fitted import FittedJudge, _negative\n"
        "from ..judges import fitted as f\n"
        "from .posthoc import _scored_base\n"
        "import judgecal.judges.verifiers as v\n"
        "def use(judge, row):\n"
        "    f._without_lms(row)\n"
        "    v._rows_key([row])\n"
        "    return judge._row(row), row._own\n"
        "_own = 1\n"
    )
    found = private_names_used("calibrate.trained", source, elsewhere={"_row": ("judges.fitted",)})
    assert found[:3] == [
        "calibrate.trained imports _negative from judges.fitted",
        "calibrate.trained imports _scored_base from calibrate.posthoc",
        "calibrate.trained reads f._without_lms",
    ]
    assert "calibrate.trained reads v._rows_key" in found
    assert "calibrate.trained uses judge._row, private to judges.fitted" in found
    assert not any("_own" in line for line in found)
    assert private_names_used("judges.fitted", "from judgecal.judges.fitted import _negative\n") == []


def test_no_module_uses_another_modules_private_names() -> None:
    found = [
        line
        for module, path in modules().items()
        for line in private_names_used(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
    ]
    assert not found, "\n".join(found)


def test_every_module_belongs_to_a_ranked_package_or_is_a_utility() -> None:
    unknown = {m for m in modules() if package_of(m) not in RANKS and m not in UTILITIES}
    assert not unknown
    assert "signatures.relevance" in modules()


def test_imports_flow_one_way() -> None:
    known = modules()
    wrong = []
    for module in known:
        source = package_of(module)
        for imported in imports_of(module):
            target = package_of(imported)
            if imported not in known:
                wrong.append(f"{module} imports {imported}, which is no module of judgecal")
            elif target == source or imported in UTILITIES or target in UTILITIES:
                continue
            elif source in UTILITIES:
                wrong.append(f"utility {module} imports {imported}")
            elif RANKS[target] >= RANKS[source]:
                wrong.append(f"{module} ({source}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_command_line() -> None:
    outside = [m for m in modules() if package_of(m) != "cli"]
    assert not [m for m in outside if any(package_of(i) == "cli" for i in imports_of(m))]


def test_no_module_is_over_600_lines() -> None:
    long = {
        m: n
        for m, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MODULE_MOST_LINES
    }
    assert not long, f"modules over {MODULE_MOST_LINES} lines: {long}"


def test_no_function_is_over_80_lines() -> None:
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_MOST_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_no_import_cycles() -> None:
    known = modules()
    graph = {m: {i for i in imports_of(m) if i in known} for m in known}
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
