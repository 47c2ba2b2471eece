"""The `memoir` pytest plugin: fixtures that serve your App in-process, for your async tests.

Installed with Memoir (the `pytest11` entry point), so `pytest --fixtures` lists them in
any project that has Memoir. Tell it your App with the ini option `memoir_app =
module:attribute`, or by overriding the `memoir_app` fixture (a conftest.py, or one
module for one app).

The async fixtures are pytest-asyncio fixtures (plain async fixtures to anyio's plugin when
pytest-asyncio is not there: not installed, or `-p no:asyncio`) and run on the loop your
tests run on: keep `asyncio_default_fixture_loop_scope` equal to your tests' loop scope
(`function`, the default, unless you changed it). The session-wide nats-server is a plain
fixture whose process is looked after by a thread of its own, so it needs no session loop.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from ..engine.runtime import Runtime
from ..journal import MemoryJournal
from ..model.app import App
from ..model.errors import ConfigError
from ..serve.process.run import load_app
from ..serve.service._service import Service
from ..serve.service.client import Client
from ..serve.service.embedded_nats import EmbeddedNats
from .harness import served
from .own_task import InOwnTask

try:
    import pytest_asyncio

    _async_fixture: Callable[..., Any] = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - anyio's plugin runs plain async fixtures
    _async_fixture = pytest.fixture

INI_APP = "memoir_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI_APP, "the App the memoir_* fixtures serve, as module:attribute", default="")


@pytest.fixture
def memoir_app(request: pytest.FixtureRequest) -> App:
    """Your App: set `memoir_app = module:attribute` in the pytest ini, or override this fixture."""
    spec = str(request.config.getini(INI_APP))
    if not spec:
        pytest.fail(
            "memoir: which App do these tests serve? Set `memoir_app = module:attribute` in your pytest"
            " configuration, or override the `memoir_app` fixture to return it",
            pytrace=False,
        )
    try:
        return load_app(spec)
    except ConfigError as exc:
        pytest.fail(f"memoir: the ini option memoir_app: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def memoir_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """An embedded nats-server with JetStream on a free port and a temp store, one per session: use its `url`."""
    server = EmbeddedNats(tmp_path_factory.mktemp("memoir-nats"))
    with start_blocking_portal("asyncio") as portal, portal.wrap_async_context_manager(server):
        yield server


@pytest.fixture
def memoir_prefix() -> str:
    """The subject prefix of this test's service, unique per test: tests share memoir_nats unseen."""
    return f"test_{uuid.uuid4().hex[:12]}"


@_async_fixture
async def memoir_service(memoir_app: App, memoir_nats: EmbeddedNats, memoir_prefix: str) -> AsyncIterator[Service]:
    """memoir_app served on memoir_nats: runtime on a fresh memory journal, publisher, views, consumers."""
    async with InOwnTask(served(memoir_app, memoir_nats.url, prefix=memoir_prefix), name="memoir_service") as svc:
        yield svc


@_async_fixture
async def memoir_client(memoir_service: Service, memoir_nats: EmbeddedNats) -> AsyncIterator[Client]:
    """A Client connected to memoir_nats, sending commands to memoir_service."""
    async with Client(memoir_nats.url, prefix=memoir_service.prefix) as client:
        yield client


@_async_fixture
async def _memoir_runtime_alone(memoir_app: App) -> AsyncIterator[Runtime]:
    async with MemoryJournal() as journal, InOwnTask(Runtime(memoir_app, journal), name="memoir_runtime") as runtime:
        yield runtime


@pytest.fixture
def memoir_runtime(request: pytest.FixtureRequest) -> Runtime:
    """memoir_app's Runtime on a fresh memory journal, no NATS; memoir_service's own if the test uses both."""
    if "memoir_service" in request.fixturenames:  # one runtime per journal, or two actors per entity
        service: Service = request.getfixturevalue("memoir_service")
        return service.runtime
    runtime: Runtime = request.getfixturevalue("_memoir_runtime_alone")
    return runtime
