"""The web console (`/ui`) in a real browser: Debian's headless Chromium, driven by Playwright.

Each test runs against a real `memoir run --http-port` (the sagas app, seeded with the README's
XYZ-1 history as `memoir demo` plays it; the dead-letter test starts its own app) and signs in
with the data dir's token, as its owner would. Each saves a screenshot in its tmp_path (printed)
and copies it to MEMOIR_CONSOLE_SHOTS (default /tmp/console-shots), one per page, to be shown.
Commands are sent with the `memoir` CLI, meanwhile, as another user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from support.ci import in_ci
from support.deadletter_app import FIX_FILE
from support.postgres import need_postgres, schema_for
from support.process import RunningRuntime
from support.waiting import eventually_sync

from runtime.serve.process.http_token import read_http_token
from runtime.serve.service.embedded_nats import free_port

try:
    from playwright import sync_api as playwright
except ImportError:  # pragma: no cover - the `test` extra installs it
    if in_ci():
        raise
    pytest.skip("playwright is not installed (it is in the `test` extra)", allow_module_level=True)
expect = playwright.expect

SHOTS = Path(os.environ.get("MEMOIR_CONSOLE_SHOTS", "/tmp/console-shots"))
SEED: list[tuple[str, dict[str, Any]]] = [  # `memoir demo`'s scenario (runtime/serve/cli/commands/demo.py)
    ("open", {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}),
    ("receive", {"units": 100, "on": "2022-03-01"}),
    ("sell", {"units": 20, "on": "2022-03-15"}),
    ("receive", {"units": 50, "on": "2022-03-15"}),
    ("sell", {"units": 20, "on": "2022-04-01"}),
    ("adjust", {"units": -20, "on": "2022-04-01", "reason": "stock count"}),
]
SEED_EVENTS = ["Opened", "Received", "Sold", "Received", "Sold", "Adjusted"]


@dataclass
class Served:
    rt: RunningRuntime
    url: str

    @property
    def token(self) -> str:
        token = read_http_token(self.rt.data)
        assert token is not None, "memoir run --http-port wrote no http.token"
        return token

    def send(self, entity_type: str, entity_id: str, command: str, args: dict[str, Any]) -> None:
        sent = self.rt.cli("send", entity_type, entity_id, command, json.dumps(args))
        assert sent.returncode == 0, sent.stderr


def start(data: Path, *app: str) -> Served:
    port = free_port()
    rt = RunningRuntime(data, *app, "--http-port", str(port)).start()
    return Served(rt, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    path = shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start(tmp_path_factory.mktemp("console") / "data", "entities:sagas")
    try:
        for command, args in SEED:
            served.send("inventory", "XYZ-1", command, args)
        yield served
    finally:
        assert served.rt.stop() == 0


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1100, "height": 800})
    yield context.new_page()
    context.close()


def signed_in(page: Any, served: Served, path: str) -> Any:
    """Open `path`, which sends the browser to the login form; sign in; land on `path`'s page."""
    page.goto(served.url + path)
    expect(page).to_have_url(served.url + "/ui/login")
    page.get_by_label("Token").fill(served.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Entities")).to_be_visible()
    page.goto(served.url + path)
    return page


def screenshot(page: Any, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    print(f"screenshot: {path} (copied to {SHOTS / path.name})")


def test_a_page_without_a_credential_is_refused(page: Any, served: Served, tmp_path: Path) -> None:
    answer = page.request.get(served.url + "/ui/entity?type=inventory&id=XYZ-1", max_redirects=0)
    assert answer.status == 303 and answer.headers["location"] == "/ui/login"
    row = page.request.get(served.url + "/ui/row?type=inventory&id=XYZ-1&seq=1", max_redirects=0)
    assert row.status == 303 and "Opened" not in row.text()
    page.goto(served.url + "/ui/entity?type=inventory&id=XYZ-1")
    expect(page).to_have_url(served.url + "/ui/login")
    page.get_by_label("Token").fill("not-the-token-" + "x" * 40)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That credential was refused.")
    assert page.context.cookies() == []
    screenshot(page, tmp_path, "login-refused")
    forged = page.request.post(  # another site's form posting the right token: refused, no cookie
        served.url + "/ui/login", form={"token": served.token}, headers={"Origin": "http://evil.example"}
    )
    assert forged.status == 403 and "set-cookie" not in forged.headers


def test_the_login_cookie_is_http_only_and_same_site_strict(page: Any, served: Served) -> None:
    signed_in(page, served, "/ui/entity")
    (cookie,) = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert page.evaluate("document.cookie") == ""  # no script on the page can read it
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(served.url + "/ui/login")
    page.goto(served.url + "/ui/metrics")
    expect(page).to_have_url(served.url + "/ui/login")


def test_with_jwts_the_console_takes_a_jwt_as_the_api_does(page: Any, tmp_path: Path) -> None:
    """`--jwt-secret-file`: no data dir token; the login takes a JWT, and an expired one is refused."""
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    secret.chmod(0o600)
    served = start(tmp_path / "data", "--jwt-secret-file", str(secret))
    try:
        now = int(time.time())
        for exp, admitted in ((now - 60, False), (now + 600, True)):
            claims = {"sub": "ops", "exp": exp, "roles": ["admin"]}
            token = jwt.encode(claims, secret.read_bytes(), algorithm="HS256")
            page.goto(served.url + "/ui/metrics")
            expect(page).to_have_url(served.url + "/ui/login")
            page.get_by_label("Token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            if admitted:
                expect(page.get_by_role("heading", name="Entities")).to_be_visible()
            else:
                expect(page.get_by_role("alert")).to_have_text("That credential was refused.")
        assert read_http_token(served.rt.data) is None
    finally:
        assert served.rt.stop() == 0


def test_click_through_xyz1_history_and_travel_to_seq_3(page: Any, served: Served, tmp_path: Path) -> None:
    signed_in(page, served, "/ui/entity")
    page.get_by_label("Entity type").select_option("inventory")
    page.get_by_label("Entity id").fill("XYZ-1")
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_role("heading", name="inventory XYZ-1")).to_be_visible()
    rows = page.locator("#history tbody tr")
    for i, name in enumerate(SEED_EVENTS):
        expect(rows.nth(i).locator("td").nth(1)).to_have_text(name)
    expect(rows.nth(5).locator("td").nth(4)).to_contain_text('"units":190')  # 100 + 100 - 20 + 50 - 20 - 20
    rows.nth(2).locator("td").nth(1).click()  # anywhere on the row: the time travel to seq 3
    expect(page).to_have_url(served.url + "/ui/entity?type=inventory&id=XYZ-1&first=1&seq=3")
    expect(page.get_by_role("heading", name="State at seq 3 (time travel)")).to_be_visible()
    state = page.get_by_role("table", name="State at seq 3 (time travel)")
    expect(state.get_by_role("row", name="units 180")).to_be_visible()  # opened 100, +100, -20
    expect(state.get_by_role("row", name="last_out 2022-03-15")).to_be_visible()
    expect(page.locator("#history tr.chosen td").first).to_have_text("3")
    screenshot(page, tmp_path, "entity-time-travel")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the page fits, wide tables scroll
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, tmp_path, "entity-phone")
    page.get_by_role("link", name="state at seq 1").focus()  # the keyboard's way: a link per row
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="State at seq 1 (time travel)")).to_be_visible()


def test_a_live_update_arrives_after_a_command_sent_meanwhile(page: Any, served: Served, tmp_path: Path) -> None:
    signed_in(page, served, "/ui/entity?type=inventory&id=XYZ-1")
    expect(page.locator("#live-status")).to_have_text("Following live.")
    before = page.locator("#history tbody tr").count()
    served.send("inventory", "XYZ-1", "receive", {"units": 7, "on": "2022-05-01"})
    new = page.locator(f'#history tbody tr.new[data-seq="{before + 1}"]')
    expect(new).to_be_visible(timeout=20_000)
    expect(new.locator("td").nth(1)).to_have_text("Received")
    expect(new.locator("td").nth(3)).to_have_text('{"units":7,"on":"2022-05-01"}')
    expect(page.locator("#live-status")).to_have_text(f"Event {before + 1} (Received) arrived.")
    screenshot(page, tmp_path, "entity-live")
    new.locator("td").nth(1).click()  # a row that arrived live travels in time like the others
    expect(page.get_by_role("heading", name=f"State at seq {before + 1} (time travel)")).to_be_visible()


def test_a_transfer_workflows_steps(page: Any, served: Served, tmp_path: Path) -> None:
    served.send("account", "a", "deposit", {"amount": 100})
    served.send("transfer", "t1", "start", {"source": "a", "target": "b", "amount": 30})
    signed_in(page, served, "/ui/workflows")
    page.get_by_label("Workflow id").fill("t1")
    with page.expect_navigation():  # the form's page loaded before any reload (a reload mid-way detaches)
        page.get_by_role("button", name="Show").click()

    def ended() -> bool:
        page.reload()
        return page.get_by_role("row", name="status ended").count() == 1

    eventually_sync(ended, what="the transfer to end")
    steps = page.get_by_role("table", name="Step history, oldest first")
    expect(steps.get_by_role("row", name="1 withdraw 1 completed")).to_be_visible()
    expect(steps.get_by_role("row", name="2 deposit 1 completed")).to_be_visible()
    expect(page.get_by_text("No pending timers.")).to_be_visible()  # ended: its timer is gone
    screenshot(page, tmp_path, "workflow")


def test_browse_a_view_and_run_its_query(page: Any, tmp_path: Path) -> None:
    served = start(tmp_path / "data", "entities:app")
    try:
        served.send("post", "p1", "publish", {"author": "ann", "text": "hello"})
        served.send("post", "p2", "publish", {"author": "bob", "text": "hi"})
        signed_in(page, served, "/ui/views")
        with page.expect_navigation():  # loaded before `both` reloads it
            page.get_by_role("link", name="posts_by_author").click()
        rows = page.get_by_role("table", name="first rows")

        def both() -> bool:
            page.reload()
            return rows.get_by_role("row").count() == 3  # the header and two authors

        eventually_sync(both, what="the view to hold both authors")
        expect(rows).to_contain_text('"author":"ann"')
        page.get_by_label("Query").fill(json.dumps({"limit": 1}))  # a page of one row, in key order
        page.get_by_role("button", name="Run query").click()
        result = page.locator("#query-result")
        expect(result).to_contain_text('"author":"ann"')
        assert '"author":"bob"' not in result.inner_text()
        where = {"where": {"op": "=", "field": "nope", "value": 1}}  # a refused query is named, not a crash
        page.get_by_label("Query").fill(json.dumps(where))
        page.get_by_role("button", name="Run query").click()
        expect(page.get_by_role("alert")).to_contain_text("field 'nope' is not declared for queries")
        screenshot(page, tmp_path, "view")
    finally:
        assert served.rt.stop() == 0


def test_a_compensated_transfer_shows_its_refund(page: Any, served: Served, tmp_path: Path) -> None:
    """The target is closed: the deposit is refused, the workflow goes on to its refund step."""
    served.send("account", "a2", "deposit", {"amount": 100})
    served.send("account", "closed-2", "close", {})
    served.send("transfer", "t2", "start", {"source": "a2", "target": "closed-2", "amount": 30})
    signed_in(page, served, "/ui/workflows?type=transfer&id=t2")

    def ended() -> bool:
        page.reload()
        return page.get_by_role("row", name="status ended").count() == 1

    eventually_sync(ended, what="the transfer to end")
    steps = page.get_by_role("table", name="Step history, oldest first")
    expect(steps.get_by_role("row", name="1 withdraw 1 completed")).to_be_visible()
    expect(steps.get_by_role("row", name="2 deposit 1 completed refund")).to_be_visible()
    expect(steps.get_by_role("row", name="3 refund 1 completed")).to_be_visible()
    expect(page.get_by_role("table", name="Status")).to_contain_text('"outcome":"refunded"')
    screenshot(page, tmp_path, "workflow-refunded")


def test_the_cluster_and_the_metrics(page: Any, served: Served, tmp_path: Path) -> None:
    signed_in(page, served, "/ui/metrics")
    expect(page.get_by_role("table", name="Every sample /metrics serves")).to_contain_text("memoir_live_actors")
    commands = page.locator(".card", has_text="Commands").locator(".n")
    assert int(commands.inner_text()) >= len(SEED)  # this process's own counters: the seed's commands
    screenshot(page, tmp_path, "metrics")
    page.goto(served.url + "/ui/cluster")
    expect(page.get_by_text("This process runs alone (not a cluster member).")).to_be_visible()


def test_a_cluster_members_shards_and_singletons(page: Any, tmp_path: Path) -> None:
    """A one-member cluster (`memoir run --cluster`, its journal in PostgreSQL): it holds every shard."""
    url = need_postgres()
    journal = f"{url}?schema={schema_for('console_', tmp_path)}"
    served = start(tmp_path / "data", "entities:sagas", "--cluster", "--journal", journal)
    try:
        signed_in(page, served, "/ui/cluster")
        expect(page.get_by_text("256 shards, 0 unowned.")).to_be_visible()
        members = page.get_by_role("table", name="Members")
        expect(members.get_by_role("row")).to_have_count(2)  # the header and the one member
        held = page.get_by_role("table", name="Shards per member").get_by_role("row", name="256 0-255")
        expect(held).to_have_count(1)
        singletons = page.get_by_role("table", name="Singletons")
        expect(singletons).to_contain_text("publisher")
        expect(singletons).to_contain_text("timers.relay")
        screenshot(page, tmp_path, "cluster")
    finally:
        assert served.rt.stop() == 0


def test_a_dead_letter_replay(page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fix = tmp_path / "fixed"
    monkeypatch.setenv(FIX_FILE, str(fix))
    served = start(tmp_path / "data", "tests.support.deadletter_app:app")
    try:
        served.send("post", "bad-1", "publish", {"author": "ann", "text": "poison"})
        signed_in(page, served, "/ui/deadletters")

        def parked() -> bool:
            page.reload()
            return page.get_by_role("button", name="Replay parked event").count() == 1

        eventually_sync(parked, what="the poison post parked")
        expect(page.get_by_role("table", name="Events tally parked")).to_contain_text("cannot handle bad-1 yet")
        source = page.get_by_role("link", name="post/bad-1/1")  # the parked event, at its seq
        expect(source).to_have_attribute("href", "/ui/entity?type=post&id=bad-1&seq=1")
        screenshot(page, tmp_path, "deadletters")
        fix.touch()
        page.get_by_role("button", name="Replay parked event").click()
        expect(page).to_have_url(re.compile(r"/ui/deadletters\?done="))  # redirected: a reload repeats nothing
        expect(page.get_by_role("status").filter(has_text="Last action")).to_have_text(
            re.compile(r"Last action: tally \d+: replayed")
        )
        expect(page.get_by_text("tally has no parked events.")).to_be_visible()
        profile = served.rt.cli("send", "profile", "audit", "get", "--json")
        assert json.loads(profile.stdout)["result"]["posts"] == 1  # the replay's effect, once
    finally:
        assert served.rt.stop() == 0
