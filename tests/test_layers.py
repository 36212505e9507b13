"""The package's dependencies point one way (DESIGN.md): bottom (weights, hardware, paths, identity, data,
diffusion) -> models -> losses / metrics / quant -> callbacks -> systems -> cli / sweeps, and no module imports itself
through others. Run alone with `pytest tests/test_layers.py`; a failure names the file, line and import."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stisr_lightning"
LAYERS = {
    "weights": 0, "hardware": 0, "paths": 0, "identity": 0, "data": 0, "diffusion": 0,
    "models": 1,
    "losses": 2, "metrics": 2, "quant": 2,
    "callbacks": 3,
    "systems": 4,
    "cli": 5, "sweeps": 5,
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of the package inside it, lazy ones included; a
    `from package import name` counts as importing the submodule `name` when there is one."""
    modules = {module_name(path, root) for path in root.rglob("*.py")}
    found = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            else:
                continue
            found += [(source, target, node.lineno) for target in targets if target.split(".")[0] == root.name]
    return found


def layer_of(module: str) -> tuple[str, int | None]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return top, LAYERS.get(top)


def upward_imports(root: Path) -> list[str]:
    problems = []
    for source, target, line in imports(root):
        (source_top, source_layer), (target_top, target_layer) = layer_of(source), layer_of(target)
        if source_layer is None:
            problems.append(f"{source}: package {source_top!r} has no layer in tests/test_layers.py")
        elif target_layer is not None and target_layer > source_layer:
            problems.append(f"{source} (line {line}) imports {target}: {source_top} (layer {source_layer}) may not "
                            f"import {target_top} (layer {target_layer})")
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan) larger than one module."""
    graph: dict[str, set[str]] = {}
    for source, target, _ in imports(root):
        if source != target:
            graph.setdefault(source, set()).add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_points_upward():
    assert upward_imports(PACKAGE) == []


def test_no_import_cycle():
    assert import_cycles(PACKAGE) == []


@pytest.fixture
def bad_package(tmp_path):
    """A package with one upward import (models -> systems) and one circle (data.a <-> data.b)."""
    root = tmp_path / "stisr_lightning"
    for folder in ("models", "systems", "data"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models" / "net.py").write_text("from stisr_lightning.systems.base import STISRSystem\n")
    (root / "systems" / "base.py").write_text("STISRSystem = object\n")
    (root / "data" / "a.py").write_text("def f():\n    from stisr_lightning.data import b\n")
    (root / "data" / "b.py").write_text("import stisr_lightning.data.a\n")
    return root


def test_the_checks_find_an_upward_import_and_a_circle(bad_package):
    assert upward_imports(bad_package) == [
        "stisr_lightning.models.net (line 1) imports stisr_lightning.systems.base: models (layer 1) may not import "
        "systems (layer 4)"]
    assert import_cycles(bad_package) == [["stisr_lightning.data.a", "stisr_lightning.data.b"]]
