"""The public surface: `from runtime import …` is the API, and it says so (httpx's and anyio's tests are the model)."""

from __future__ import annotations

import ast
import importlib
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
        "forgotten": runtime.EntityForgotten,
    }
    assert set(typed) == {str(c) for c in runtime.ErrorCode}, "every wire code has its typed error"
    assert issubclass(runtime.SqliteViewStore, runtime.ViewStore)
    assert issubclass(runtime.MemoryViewStore, runtime.ViewStore)
    assert callable(runtime.open_view_store)


def test_key_value_entities_are_exported() -> None:
    """The second entity kind and the two state events its views and consumers handle."""
    assert issubclass(runtime.KeyValueEntity, runtime.EventSourcedEntity)
    assert {"KeyValueEntity", "StateSet", "StateDeleted"} <= set(runtime.__all__)


def test_a_reply_comes_back_as_the_class_the_journal_raises() -> None:
    """One name per idea: `except Conflict:` catches the journal's conflict and a client's alike."""
    from runtime.model.errors import command_error

    for cls, raised in [
        (runtime.Conflict, runtime.Conflict("item", "A", 3, 5)),
        (runtime.Unavailable, runtime.Unavailable("storage full", "journal.db")),
        (runtime.EntityForgotten, runtime.EntityForgotten("person", "ann")),
    ]:
        assert isinstance(raised, runtime.CommandError)
        replied = command_error(str(raised.code), raised.message, raised.details)
        assert type(replied) is cls and str(replied) == str(raised)
    assert issubclass(runtime.Conflict, runtime.JournalError) and issubclass(runtime.Unavailable, runtime.JournalError)
    assert command_error("unavailable", "storage full: x", {"reason": "storage full"}).reason == "storage full"  # type: ignore[attr-defined]


# Each deprecated name, and where it lives now: `from runtime import X` still works, and warns.
DEPRECATED = {
    "ConcurrencyConflict": ("runtime", "Conflict"),
    "JournalUnavailable": ("runtime", "Unavailable"),
    "ForgottenError": ("runtime", "EntityForgotten"),
    "EmbeddedNats": ("runtime.serve.service", "EmbeddedNats"),
    "HttpGateway": ("runtime.serve.service", "HttpGateway"),
    "KeyRing": ("runtime.engine.keyring", "KeyRing"),
    "KeyStore": ("runtime.journal.keys", "KeyStore"),
    "Publisher": ("runtime.streams.publisher", "Publisher"),
    "StreamSettings": ("runtime.streams.publisher", "StreamSettings"),
    "redact_url": ("runtime.wire.redact", "redact_url"),
    "tune_gc": ("runtime.serve.process.tuning", "tune_gc"),
    "tune_nats": ("runtime.serve.process.tuning", "tune_nats"),
    "ConsumerTestKit": ("runtime.testing", "ConsumerTestKit"),
    "EntityTestKit": ("runtime.testing", "EntityTestKit"),
    "SentCommand": ("runtime.testing", "SentCommand"),
    "ViewTestKit": ("runtime.testing", "ViewTestKit"),
    "caught_up": ("runtime.testing", "caught_up"),
}


@pytest.mark.parametrize("name", sorted(DEPRECATED))
def test_a_deprecated_name_warns_with_its_new_home_and_is_the_same_object(name: str) -> None:
    module, new = DEPRECATED[name]
    assert name not in runtime.__all__
    with pytest.warns(DeprecationWarning, match=rf"runtime\.{name} is deprecated: use {module}\.{new}\b"):
        old = getattr(runtime, name)
    assert old is getattr(importlib.import_module(module), new)


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        runtime.Nope  # type: ignore[attr-defined]  # noqa: B018


def test_the_testkits_live_in_runtime_testing() -> None:
    import runtime.testing

    for name in ["EntityTestKit", "ViewTestKit", "ConsumerTestKit", "SentCommand", "caught_up", "served"]:
        assert name in runtime.testing.__all__
        assert getattr(runtime.testing, name).__module__ == "runtime.testing"


def test_importing_runtime_does_not_load_the_testing_layer() -> None:
    """The lazy `__getattr__` is the only way from `runtime` to `runtime.testing`."""
    code = "import sys, runtime; print([m for m in sys.modules if m.startswith('runtime.testing')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


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
