"""The house rules that keep the code readable, checked on the source itself (AST, no imports run).

- no import cycle among the project's modules, counting imports inside functions;
- data flows one way: ``selfsup`` never imports ``evaluation``; evaluation's stages, probes and loading never
  import the report or the pipeline; the report never imports a stage runner's module other than for constants;
- nothing imports a private (``_name``) object of another module;
- no module grows past the size one reads in a sitting.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for base, pattern in ((ROOT / "ssl", "selfsup/**/*.py"), (ROOT, "evaluation/**/*.py")):
        for path in base.glob(pattern):
            name = ".".join(path.relative_to(base).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str, int]]:
    """``(module, imported name or "", line)`` for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found += [(base, a.name, node.lineno) for a in node.names]
    return found


def _project_edges(name: str, path: Path) -> set[str]:
    edges = set()
    for module, what, _ in _imports(name, path):
        for target in (f"{module}.{what}" if what else "", module):
            if target in MODULES and target != name:
                edges.add(target)
                break
    return edges


GRAPH = {name: _project_edges(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_module_list_covers_both_trees():
    assert {"selfsup.config", "selfsup.train.loop", "evaluation.cli", "evaluation.report.build"} <= set(MODULES)


def test_no_import_cycle_even_through_imports_inside_functions():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", ["selfsup", "evaluation.loading", "evaluation.probes", "evaluation.stages",
                                   "evaluation.figures", "evaluation.results", "evaluation.detection"])
def test_data_flows_one_way(layer):
    """Nothing upstream imports what comes after it: stages never import the report or the pipeline."""
    downstream = {"selfsup": ("evaluation",),
                  "evaluation.loading": ("evaluation.stages", "evaluation.report", "evaluation.pipeline",
                                         "evaluation.cli"),
                  "evaluation.probes": ("evaluation.stages", "evaluation.report", "evaluation.pipeline",
                                        "evaluation.cli"),
                  "evaluation.detection": ("evaluation.stages", "evaluation.report", "evaluation.pipeline",
                                           "evaluation.cli"),
                  "evaluation.figures": ("evaluation.stages", "evaluation.report", "evaluation.pipeline",
                                         "evaluation.cli"),
                  "evaluation.results": ("evaluation.stages", "evaluation.report", "evaluation.pipeline",
                                         "evaluation.cli"),
                  "evaluation.stages": ("evaluation.report", "evaluation.pipeline", "evaluation.cli")}[layer]
    wrong = [(name, target) for name, targets in GRAPH.items()
             if (name == layer or name.startswith(layer + ".")) and not name.endswith(".__main__")  # entry points
             for target in targets if target.startswith(downstream)]
    assert wrong == []


def test_nothing_imports_a_private_name_of_another_module():
    paths = dict(MODULES)
    paths.update({f"tests.{p.stem}": p for p in (ROOT / "tests").rglob("*.py")})
    paths.update({f"benchmarks.{p.stem}": p for p in (ROOT / "benchmarks").glob("*.py")})
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {what} from {module}"
             for name, path in paths.items() for module, what, line in _imports(name, path)
             if what.startswith("_") and module.startswith(("selfsup", "evaluation", "tests", "test_"))]
    assert wrong == []


def test_no_module_over_the_size_one_reads_in_a_sitting():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_nothing_outside_the_methods_names_a_method():
    """A method's name appears in its own spec module (and the registry's default), nowhere else in the package:
    the config schema, the build, the loop and the card ask the registry."""
    from selfsup.registry import specs

    names = set(specs())
    wrong = []
    for name, path in MODULES.items():
        if not name.startswith("selfsup.") or name.startswith("selfsup.methods") or name == "selfsup.registry":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert names >= {"dino", "simclr"} and wrong == []
