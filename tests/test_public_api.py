"""The public surface: `from runtime import …` is the API, and it says so (httpx's and anyio's tests are the model)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", runtime.__all__)
def test_every_exported_name_exists_is_documented_and_lives_in_runtime(name: str) -> None:
    obj = getattr(runtime, name)
    assert obj.__module__ == "runtime", f"{name}.__module__ is {obj.__module__!r}"
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):  # a class must say something of its own, not inherit its base's words
        doc = obj.__dict__.get("__doc__") or ""
    assert doc.strip(), f"{name} has no docstring"


def test_all_is_sorted_and_unique() -> None:
    assert list(runtime.__all__) == sorted(set(runtime.__all__))


def test_typed_errors_and_the_view_store_api_are_exported() -> None:
    for code in runtime.ErrorCode:
        err = runtime.CommandError(code, "x")
        assert isinstance(err, runtime.CommandError)
    typed = {
        "invalid": runtime.Invalid,
        "rejected": runtime.Rejected,
        "unknown_command": runtime.UnknownCommand,
        "unknown_entity_type": runtime.UnknownEntityType,
        "conflict": runtime.Conflict,
        "overloaded": runtime.Overloaded,
        "unavailable": runtime.Unavailable,
        "internal": runtime.InternalError,
        "unauthorized": runtime.Unauthorized,
        "forbidden": runtime.Forbidden,
        "forgotten": runtime.ForgottenError,
    }
    assert set(typed) == {str(c) for c in runtime.ErrorCode}, "every wire code has its typed error"
    assert issubclass(runtime.SqliteViewStore, runtime.ViewStore)
    assert issubclass(runtime.MemoryViewStore, runtime.ViewStore)
    assert callable(runtime.open_view_store)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "entities").glob("*.py")), ids=lambda p: p.name)
def test_examples_import_only_from_runtime(path: Path) -> None:
    deep = [m for m in _imports(path) if m.startswith("runtime.")]
    assert not deep, f"{path.name} imports {deep}; examples use `from runtime import …`"


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "runtime" / "py.typed").exists()


@pytest.mark.parametrize("module", ["runtime", "runtime.serve.cli"])
def test_importing_memoir_loads_no_optional_machinery(module: str) -> None:
    """PyJWT, cryptography and uvicorn load when tokens, encrypted types or HTTP are used, not
    with the package: a one-shot `memoir send` and an embedder pay for none of them."""
    heavy = ("jwt", "cryptography", "uvicorn")
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {module} loaded {out.stdout.strip()}"
