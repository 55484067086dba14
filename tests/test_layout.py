"""The package's layout holds: no import cycle between its modules (function-level imports
included), every module importable in a fresh interpreter in dependency order, and each package
importing only the packages below it. Nor is there a cycle among the modules of the scripts'
folders (benchmarks/, tools/) and the tests' helpers."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "det_scaling"

# Bottom to top: a package may import those before it, never those after. The top-level modules
# (errors, compat, the package's own __init__) are below all of them, except __main__ (the CLI).
LAYERS = (
    "utils",
    "config",
    "scaling",
    "solver",
    "data",
    "engine",
    "classification",
    "tasks",
    "commands",
    "testing",
    "cli",
)
BASE = {"det_scaling.errors", "det_scaling.compat"}
MAIN = "det_scaling.__main__"  # runs the command line when imported


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = set(module_names())


def imports_of(module: str) -> set[str]:
    """The det_scaling modules ``module`` imports anywhere in its code (a ``from P import N`` of
    a submodule N counts as N)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {name for name in found if name in MODULES and name != module}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


GRAPH = {module: imports_of(module) for module in MODULES}


def test_no_import_cycle_between_modules():
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
    assert set(order) == MODULES


def test_every_module_imports_in_a_fresh_interpreter_in_dependency_order():
    order = [m for m in graphlib.TopologicalSorter(GRAPH).static_order() if m != MAIN]
    code = f"import importlib\nfor name in {order!r}:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_each_package_imports_only_the_packages_below_it():
    upward = []
    for module, imported in GRAPH.items():
        own = layer(module)
        for name in imported - BASE - {"det_scaling"}:
            other = layer(name)
            if module in BASE:
                wrong = True  # errors and compat import no package
            elif module == "det_scaling":  # the public API: the library, not its commands
                wrong = other in {"tasks", "commands", "cli"}
            elif module == MAIN:
                wrong = other != "cli"
            else:
                wrong = other is None or LAYERS.index(other) > LAYERS.index(own)
            if wrong:
                upward.append(f"{module} -> {name}")
    assert upward == []


def test_config_and_scaling_import_no_engine_cli_or_commands():
    lower = [m for m in MODULES if layer(m) in {"config", "scaling"}]
    assert lower
    for module in lower:
        for name in GRAPH[module]:
            assert layer(name) not in {"engine", "cli", "commands", "tasks"}, (module, name)


def test_the_top_level_holds_only_the_api_the_compatibility_layer_and_the_error_type():
    files = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py")
    assert files == ["__init__.py", "__main__.py", "compat.py", "errors.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(LAYERS)


def script_modules(folder: Path, package: str = "") -> dict[str, set[str]]:
    """The modules of a folder of scripts (or of the package ``package``) and the ones among
    them each imports anywhere in its code."""
    prefix = f"{package}." if package else ""
    names = {prefix + path.stem for path in folder.glob("*.py") if path.stem != "__init__"}
    graph = {}
    for name in names:
        found = set()
        tree = ast.parse((folder / f"{name.removeprefix(prefix)}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = (found & names) - {name}
    return graph


@pytest.mark.parametrize(
    "folder, package",
    [("benchmarks", ""), ("tools", ""), ("tests/helpers", "helpers")],
)
def test_no_import_cycle_among_the_scripts_and_test_helpers(folder, package):
    graph = script_modules(REPO / folder, package)
    assert graph
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle in {folder}: {' -> '.join(error.args[1])}")
