"""The package's layers: every import (lazy ones inside functions included) goes to the same or a lower layer,
and no import cycle exists. ``TYPE_CHECKING`` imports are left out: they never run.

docs/architecture.md describes the layers; this order is their one home for the test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "probe"

# Lowest first. A module belongs to the layer of its first name under probe (probe.engine.run -> engine).
LAYERS: list[set[str]] = [
    {"_version", "errors", "settings", "util"},
    {"results"},
    {"core"},
    {"models"},
    {"data"},
    {"training"},
    {"engine"},
    {"backends"},
    {"baselines"},
    {"report"},
    {"api"},
    {"cli", "__main__"},
    {""},  # probe/__init__.py: the public names
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The probe modules ``path`` imports, at any depth (functions included), except under TYPE_CHECKING."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.split(".")[0] == "probe"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            targets = [t for t in targets if t.split(".")[0] == "probe"]
        else:
            targets = []
        for target in targets:
            module = owner(target)
            if module is not None and module != name:
                found.add(module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in ROOT.rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _graph() if _layer(m) not in RANK)
    assert not unplaced, f"add these to LAYERS (and docs/architecture.md): {unplaced}"


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{module} ({_layer(module) or 'probe'}) imports {target} ({_layer(target) or 'probe'})"
        for module, targets in _graph().items()
        for target in targets
        if RANK.get(_layer(target), -1) > RANK.get(_layer(module), -1)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_report_imports_no_computation():
    """report/ renders a measurement: what it reads of one (labels, per-layer values) lives in results/."""
    allowed = {"report", "results", *LAYERS[0]}
    found = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if _layer(module) == "report"
        for target in targets
        if _layer(target) not in allowed
    ]
    assert not found, "\n".join(sorted(found))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycle():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected


def test_lazy_imports_inside_functions_count_and_type_checking_ones_do_not(tmp_path, monkeypatch):
    package = tmp_path / "probe"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine" / "__init__.py").write_text("")
    (package / "api.py").write_text("")
    (package / "engine" / "run.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..cli import app\n"
        "def late():\n    from .. import api\n"
    )
    (package / "cli.py").write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", package)
    graph = _graph()
    assert graph["probe.engine.run"] == {"probe.api"}  # the lazy import, not the TYPE_CHECKING one
    assert RANK[_layer("probe.api")] > RANK[_layer("probe.engine.run")]  # so the layer test would fail


def test_import_probe_imports_neither_timm_nor_torchvision():
    """Both cost seconds to import; the registry imports their builders only when a name needs them."""
    code = "import sys, probe; print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'torchvision'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
    assert done.stdout.strip() == "[]"
