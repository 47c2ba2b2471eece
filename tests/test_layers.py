"""No hidden import cycles in runtime/: import-linter sees the layers, these see what it cannot.

import-linter checks that each layer imports only the ones below, but a cycle inside one layer
passes it, and an import inside a function (or under TYPE_CHECKING) hides a cycle from Python
itself until the day the import order changes. So two rules, read from the source:

- a function never imports a runtime module: modules that need each other's parts take them
  through a constructor or a small Protocol instead (the key stores, shredding, the timers).
  Only third-party packages may be imported lazily, and only those on `LAZY_ALLOWED`;
- the graph of module-level imports of runtime modules, TYPE_CHECKING blocks included, has no
  cycle (a module importing its own package's `__init__` aside).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"

# Third-party packages imported inside functions on purpose, and why.
LAZY_ALLOWED = {
    "asyncio": "eventloop.current(): asks the running loop's type only when a log line wants it",
    "asyncpg": "optional (memoir[postgres]): loaded only by a postgresql:// journal or view store",
    "cryptography": "loaded on the first sealed payload: an app with no encrypted entity never pays for it",
    "jwt": "optional: loaded only when JWT auth is configured",
    "nats": "process/tuning.py patches nats-py's client only when asked to",
    "nkeys": "optional: loaded only for NKey identities and credentials",
    "opentelemetry": "optional (memoir[otel]): loaded only when an SDK tracer provider is in use",
    "obstore": "optional (memoir[archive]): loaded only when an archive URL is opened",
    "starlette": "CORS middleware, loaded only when origins are configured",
    "uvicorn": "optional: loaded only when the HTTP gateway is served",
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module under runtime/."""
    found = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        parts = ("runtime", *path.relative_to(RUNTIME).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The absolute names an import statement names: `from .x import y` is `pkg.x.y` or `pkg.x`."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    for alias in node.names:
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def _runtime_module(name: str) -> str | None:
    """The runtime module an imported name lives in, or None for anything else."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _function_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from (n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom))


def test_no_function_imports_a_runtime_module() -> None:
    offenders = []
    for module, (path, is_package) in MODULES.items():
        for node in _function_imports(_tree(path)):
            for target in _targets(module, is_package, node):
                where = f"{path.relative_to(RUNTIME.parent)}:{node.lineno} imports {target}"
                if _runtime_module(target) is not None:
                    offenders.append(where + " inside a function: pass what it needs in instead")
                elif target.split(".")[0] not in LAZY_ALLOWED:
                    offenders.append(where + " inside a function: import it at the top, or add it to LAZY_ALLOWED")
    assert not offenders, "\n".join(offenders)


def test_lazy_imports_allowed_are_still_used() -> None:
    """The allow-list stays small: an entry nobody imports lazily any more goes."""
    used = {
        target.split(".")[0]
        for module, (path, is_package) in MODULES.items()
        for node in _function_imports(_tree(path))
        for target in _targets(module, is_package, node)
    }
    assert set(LAZY_ALLOWED) <= used, f"no longer imported lazily: {sorted(set(LAZY_ALLOWED) - used)}"


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in MODULES.items():
        deps = graph[module] = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(module, is_package, node):
                    dep = _runtime_module(target)
                    if dep is not None and dep != module and not module.startswith(dep + "."):
                        deps.add(dep)  # a module importing its own package's __init__ is no cycle
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None (depth-first search)."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path, on_path = [root], {root}
        stack = [iter(sorted(graph[root]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()
                continue
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_runtime_modules_import_each_other_without_cycles() -> None:
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle (TYPE_CHECKING imports included): " + " -> ".join(cycle or [])
