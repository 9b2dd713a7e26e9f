"""The shape DESIGN.md promises, checked on the source: data flows forward, no module imports
itself back through another, and the plugin registry is reached only at the edge."""

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "vichat"

#: The stages, and the earlier stages each may import (every stage may import the core modules,
#: vichat/*.py). Data flows forward through this picture; nothing reaches back.
MAY_IMPORT = {
    "data": set(),
    "translate": {"data"},
    "train": {"data"},
    "tiny": {"data", "train"},
    "evaluate": {"data"},
    "serve": {"data"},
    "arena": set(),
    "app": {"data", "serve", "evaluate", "arena"},
}


#: Known exceptions, to be removed (never added to): each one is work left in the restructuring.
#: The tests below fail when one of these is fixed and not removed here, so the lists only shrink.
KNOWN_BACKWARD: set[str] = set()
KNOWN_REGISTRY_CALLERS: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the vichat modules it imports, lazily inside functions included."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: not imported at run time
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _stage(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (PKG / parts[-1]).is_dir() and len(parts) == 2 else "core"


def _is_edge(name: str) -> bool:
    """The CLI, each stage's command module, the app, and the plugin authors' facade."""
    last = name.rsplit(".", 1)[-1]
    return (name in ("vichat.cli", "vichat.plugin") or last == "commands" or last.endswith("_commands")
            or _stage(name) == "app")


def test_no_module_imports_itself_back():
    graph = _imports(_modules())
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def test_data_flows_forward_between_stages():
    graph = _imports(_modules())
    backward = []
    for module, targets in graph.items():
        if _is_edge(module):
            continue
        here = _stage(module)
        for target in targets:
            there = _stage(target)
            if there == "core" or there == here:
                continue
            if here == "core" or there not in MAY_IMPORT.get(here, set()):
                backward.append(f"{module} -> {target}")
    assert set(backward) == KNOWN_BACKWARD


def test_the_registry_is_reached_only_at_the_edge():
    callers = []
    for name, path in _modules().items():
        if name == "vichat.plugins" or _is_edge(name):
            continue
        calls = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call) and "get_registry" in ast.unparse(node.func)]
        if calls:  # a mention in a docstring or example is not a call
            callers.append(name)
    assert set(callers) == KNOWN_REGISTRY_CALLERS
