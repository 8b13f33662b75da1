"""The daemon's and the benchmark's modules import one way: no module reaches itself through its imports.

The graph is read from the source with ``ast``. Every import counts: module level, inside functions (a lazy
import still ties the two modules together) and under ``TYPE_CHECKING`` (an annotation that names a type is a
dependency of the design too, and a circle hidden there returns as soon as the import is needed at run time).
An import of a package counts as an import of its ``__init__``; ``from package import name`` counts as an
import of the submodule ``package.name`` when that is a module, else of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("asr_daemon", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    # A package's relative imports start at itself; a module's at its package.
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    origin = ".".join([*base, node.module] if node.module else base)
                else:
                    origin = node.module or ""
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    targets.append(submodule if submodule in files else origin)
            for target in targets:
                # `import a.b.c` loads a, a.b and a.b.c: the deepest module of ours is the dependency.
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for child in sorted(graph[node]):
            if child in on_path:
                return [*path[path.index(child) :], child]
            if child not in done and (cycle := visit(child)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


# The flow, top to bottom: a module may import its own layer and the layers below it, never one above.
# A name covers a package or module and what is under it, the longest name wins; modules not named here
# (settings, events, text, redact, ...) are leaves, the bottom layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__", "config", "daemon", "info", "setup_check", "service", "discovery"),
    ("sources", "sinks", "service.metrics"),
    ("utterance", "session", "routing"),
    ("vendors", "emulators"),
    ("resilience", "audio"),
)


def layer(module: str) -> int:
    inner = module.removeprefix("asr_daemon").removeprefix(".")
    named = [
        (len(name), rank)
        for rank, names in enumerate(LAYERS)
        for name in names
        if inner == name or inner.startswith(name + ".")
    ]
    return max(named)[1] if named else len(LAYERS)


def test_the_graph_is_read_from_the_package() -> None:
    graph = import_graph()
    assert "asr_daemon.settings" in graph["asr_daemon.daemon"]
    assert "asr_daemon.vendors.base" in graph["asr_daemon.vendors.local.engine"]  # relative, two levels up
    assert "bench.report" in graph["bench.run"]  # `from . import report` names a module


def test_no_module_imports_itself_through_others() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_import_runs_down_the_flow() -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("asr_daemon")
        for target in targets
        if target.startswith("asr_daemon") and layer(target) < layer(module)
    )
    assert not upward, "imports against the flow:\n" + "\n".join(upward)
