"""The package's import graph has no cycles (module-level and function-level imports alike), and the core
(hardware, models, estimate, plan) imports no server, CLI or runtime code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gpumix"
CORE = ("gpumix.hardware", "gpumix.models", "gpumix.estimate", "gpumix.plan")
NOT_CORE = ("gpumix.cli", "gpumix.run", "gpumix.gateway", "gpumix.launch", "gpumix.tune")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the gpumix modules it imports anywhere in its body (a `from pkg import name` of a submodule
    counts as importing that submodule)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first = last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "gpumix.plan.planner" in graph["gpumix.cli.plan_cmds"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_imports_no_server_cli_or_runtime_code():
    graph = import_graph()
    bad = sorted((name, target) for name, targets in graph.items() if name.startswith(CORE)
                 for target in targets if target.startswith(NOT_CORE))  # fmt: skip
    assert bad == []


def test_the_core_layers_import_downward_only():
    """hardware and models → estimate → plan: estimate never imports plan (MemoryBreakdown lives in estimate)."""
    graph = import_graph()
    upward = {"gpumix.hardware": ("gpumix.estimate", "gpumix.plan"), "gpumix.models": ("gpumix.estimate", "gpumix.plan"),
              "gpumix.estimate": ("gpumix.plan",)}  # fmt: skip
    bad = sorted((name, target) for name, targets in graph.items() for layer, above in upward.items()
                 if name.startswith(layer) for target in targets if target.startswith(above))  # fmt: skip
    assert bad == []
