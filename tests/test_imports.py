"""Import structure: the training loop, reports, sweeps, export and methods import each other in one direction
only (module-level and function-level imports alike), so none needs a deferred import to break a circle."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERED = {"mmpt.train", "mmpt.report", "mmpt.sweep", "mmpt.sweep_summary", "mmpt.interop", "mmpt.inference",
           "mmpt.methods", "mmpt.tasks", "mmpt.tasks.objectives"}


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmpt."):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        for dep in graph[stack.pop()]:
            if dep == goal:
                return True
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return False


def test_no_import_circles_through_the_loop_reports_and_export():
    graph = _graph()  # the root package 'mmpt' (lazy attributes) is not a module-level dependency
    circles = [m for m in sorted(LAYERED) if _reaches(graph, m, m)]
    assert not circles, f"import circles through {circles}"
