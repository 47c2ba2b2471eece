"""The `memoir` pytest plugin as a user meets it: a test project run by pytest in a subprocess,
with pytest-asyncio, the plugin found through its entry point, and the README's sample as printed."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "docs" / "guides" / "testing.md"  # the guide prints it

STRICT = "filterwarnings = error\naddopts = -p no:cacheprovider --strict-config --strict-markers\n"


def readme_sample() -> tuple[str, str]:
    """The ini and the test module that the testing guide's "Testing your entities" section prints."""
    text = README.read_text()
    section = text[text.index("## Testing your entities") :]
    section = section[: section.index("\n## ", 1)]
    ini = re.search(r"```ini\n(.*?)```", section, re.S)
    module = re.search(r"```python\n(.*?)```", section, re.S)
    assert ini and module, "the testing guide lost its ini or its test module"
    return ini.group(1), module.group(1)


MORE = """
import pytest

pytestmark = pytest.mark.asyncio
seen = []


async def test_one_of_two_on_the_session_server(memoir_client, memoir_nats, memoir_prefix):
    seen.append((memoir_nats.url, memoir_prefix))
    assert (await memoir_client.send("post", "same", "publish", {"author": "a", "text": "x"})).seq == 1


async def test_two_of_two_sees_nothing_of_the_first(memoir_client, memoir_nats, memoir_prefix):
    seen.append((memoir_nats.url, memoir_prefix))
    assert (await memoir_client.send("post", "same", "publish", {"author": "a", "text": "x"})).seq == 1
    (url_1, prefix_1), (url_2, prefix_2) = seen
    assert url_1 == url_2 and prefix_1 != prefix_2


async def test_memoir_runtime_is_the_services_own_when_both_are_used(memoir_runtime, memoir_service, memoir_client):
    assert memoir_runtime is memoir_service.runtime  # one runtime per journal: never two actors per entity
    await memoir_runtime.ask("post", "p1", "publish", {"author": "a", "text": "x"})
    assert (await memoir_client.send("post", "p1", "get")).result["author"] == "a"


async def test_a_failing_assertion_is_reported(memoir_client):
    reply = await memoir_client.send("post", "p9", "publish", {"author": "a", "text": "x"})
    assert reply.seq == 2, "deliberately wrong"
"""

COUNTER = """
import msgspec
import pytest

from runtime import App, Effect, EventSourcedEntity, UnknownEntityType, applies, command

pytestmark = pytest.mark.asyncio


class Added(msgspec.Struct):
    n: int


class Count(msgspec.Struct):
    total: int = 0


class Counter(EventSourcedEntity[Count], name="counter"):
    initial = Count()

    @command
    def add(self, count: Count, n: int) -> Effect[int]:
        return self.persist(Added(n)).reply(lambda s: s.total)

    @applies
    def added(self, count: Count, e: Added) -> Count:
        return Count(count.total + e.n)


@pytest.fixture
def memoir_app():
    return App("counter", entities=[Counter])


async def test_this_modules_app_is_served(memoir_client):
    await memoir_client.send("counter", "c1", "add", {"n": 2})
    assert (await memoir_client.send("counter", "c1", "add", {"n": 3})).result == 5
    with pytest.raises(UnknownEntityType):
        await memoir_client.send("post", "p1", "publish", {"author": "a", "text": "x"})
"""


def test_the_readme_sample_and_the_fixtures_under_pytest_asyncio(pytester: pytest.Pytester) -> None:
    ini, sample = readme_sample()
    pytester.makefile(".ini", pytest=ini + STRICT)
    pytester.makepyfile(test_readme=sample, test_more=MORE, test_counter=COUNTER)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: deliberately wrong*", "*FAILED test_more.py::test_a_failing*"])
    header = result.stdout.str()
    assert re.search(r"^plugins: .*memoir-", header, re.M), "the plugin was not found through its entry point"
    assert re.search(r"^asyncio: mode=\S*strict", header, re.M | re.I), "pytest-asyncio ran them, in its default mode"

    listed = pytester.runpytest_subprocess("--fixtures")
    shown = listed.stdout.str()
    assert "    Your App: set `memoir_app = module:attribute` in the pytest ini, or override this fixture." in shown
    for name in ("memoir_app", "memoir_nats", "memoir_prefix", "memoir_service", "memoir_client", "memoir_runtime"):
        # each listed from the plugin with a docstring of its own (`pytest --fixtures` shows them in no fixed order)
        assert re.search(rf"^{name} .*-- .*plugin\.py:\d+\n    (?!no docstring)\S", shown, re.M), name


NO_APP = """
async def test_serving_without_an_app(memoir_service):
    pass
"""


def test_a_missing_or_wrong_app_is_one_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".ini",
        pytest=textwrap.dedent(
            """
            [pytest]
            asyncio_mode = auto
            asyncio_default_fixture_loop_scope = function
            """
        )
        + STRICT,
    )
    pytester.makepyfile(test_no_app=NO_APP)
    missing = pytester.runpytest_subprocess()
    missing.assert_outcomes(errors=1)
    missing.stdout.fnmatch_lines(
        ["*memoir: which App do these tests serve? Set `memoir_app = module:attribute`*override the `memoir_app`*"]
    )
    wrong = pytester.runpytest_subprocess("-o", "memoir_app=entities:nothing")
    wrong.assert_outcomes(errors=1)
    wrong.stdout.fnmatch_lines(["*memoir: the ini option memoir_app: 'entities:nothing' is not a memoir App*"])


UNDER_ANYIO = """
import pytest

from runtime.testing import caught_up

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_the_fixtures_under_anyio(memoir_service, memoir_client, memoir_runtime):
    assert memoir_runtime is memoir_service.runtime
    await memoir_client.send("post", "p1", "publish", {"author": "ann", "text": "hi"})
    await caught_up(memoir_service)
    assert (await memoir_client.send("profile", "ann", "get")).result["posts"] == 1
"""


def test_the_fixtures_also_serve_anyios_plugin_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    pytester.makefile(".ini", pytest="[pytest]\nmemoir_app = entities:app\n" + STRICT)
    pytester.makepyfile(test_anyio=UNDER_ANYIO)
    pytester.runpytest_subprocess("-p", "no:asyncio").assert_outcomes(passed=1)
