"""The web console in a real browser (headless Chromium from the distribution's `chromium`
package, driven by Playwright) on a real stack: the Temporal dev server, Postgres, the worker
and the API served by uvicorn on loopback, with the demo data of `nurture dev --demo`.

Without Chromium these tests are skipped, unless NURTURE_REQUIRE_BROWSER=1 (set by `.ci/run`)
makes that a failure. NURTURE_SCREENSHOTS=<dir> saves screenshots of the main pages there
(the ones in docs/ were made so).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from sqlalchemy import text
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.resources import Resources
from nurture.apikeys import create_api_key
from nurture.binaries import find_binary
from nurture.db.engine import SessionFactory
from nurture.demo import seed_demo
from nurture.devstack import api_server, serve
from nurture.settings import Settings
from nurture.tracing import dev_server_flags
from tests.support import EXAMPLES, ok
from worker import build_worker

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
SHOTS = os.environ.get("NURTURE_SCREENSHOTS")

if CHROMIUM is None and os.environ.get("NURTURE_REQUIRE_BROWSER") != "1":
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        dev_server_extra_args=[*dev_server_flags(), "--sqlite-pragma", "journal_mode=wal"],
    ) as env:
        yield env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Stack:
    url: str
    key: str
    api: httpx.AsyncClient  # authenticated with `key`
    temporal_ui: str


@pytest.fixture
async def stack(
    dev_server: WorkflowEnvironment, sessions: SessionFactory, task_queue: str
) -> AsyncIterator[Stack]:
    """What `nurture dev --demo` runs, the API on a real port of its own."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url="unused",
        temporal_task_queue=task_queue,
        temporal_ui_url="http://127.0.0.1:8233",
        public_base_url=url,
    )
    await seed_demo(sessions, EXAMPLES)
    key = await create_api_key(sessions, "browser")
    server = api_server(
        create_app(Resources(settings=settings, sessions=sessions, temporal=dev_server.client)),
        "127.0.0.1",
        port,
    )
    task = asyncio.create_task(serve(server))
    async with (
        build_worker(dev_server.client, sessions, task_queue, settings=settings),
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=20
        ) as api,
    ):
        async with asyncio.timeout(15):
            while True:
                if server.started:
                    break
                await asyncio.sleep(0.05)
        try:
            yield Stack(url, key.secret, api, settings.temporal_ui_url)
        finally:
            server.should_exit = True
            await task


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if CHROMIUM is None:
        pytest.fail("NURTURE_REQUIRE_BROWSER=1 but no chromium: apt-get install chromium")
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def _shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


async def _enroll(stack: Stack, name: str) -> dict[str, Any]:
    ok(
        await stack.api.put(
            f"/v1/contacts/{name}",
            json={"email": f"{name}@example.com", "fields": {"first_name": name.title()}},
        ),
        201,
    )
    enrolled: dict[str, Any] = ok(
        await stack.api.post(
            "/v1/enrollments", json={"journey_key": "quickstart", "external_id": name}
        ),
        201,
    )
    return enrolled


async def _wait_for(stack: Stack, enrollment_id: str, done: Any, within: float = 30) -> Any:
    async with asyncio.timeout(within):
        while True:
            body = ok(await stack.api.get(f"/v1/enrollments/{enrollment_id}"))
            if done(body):
                return body
            await asyncio.sleep(0.2)


async def _waiting_in_postgres(sessions: SessionFactory, step: str) -> int:
    async with sessions() as session:
        count = await session.scalar(
            text(
                "SELECT count(*) FROM enrollments e JOIN journeys j ON j.id = e.journey_id "
                "WHERE j.key = 'quickstart' AND e.status IN ('pending', 'active') "
                "AND e.current_step = :step"
            ),
            {"step": step},
        )
    return int(count or 0)


async def test_console_follows_the_journey_from_login_to_a_click(
    stack: Stack, browser: Any, sessions: SessionFactory
) -> None:
    enrolled = {name: await _enroll(stack, name) for name in ("ada", "bob", "cy")}
    for body in enrolled.values():
        await _wait_for(stack, body["id"], lambda b: b["current_step"] == "clicked_shop")

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    visited: list[str] = []
    context.on("request", lambda request: visited.append(request.url))

    # Signing in: a wrong key is refused; the right one gives an HttpOnly session cookie.
    await page.goto(f"{stack.url}/console/")
    assert page.url.endswith("/console/login")
    await _shot(page, "login")
    await page.fill("#api_key", "nrt_not-a-key")
    await page.click("button[type=submit]")
    assert "not valid" in await page.inner_text(".error")
    await page.fill("#api_key", stack.key)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#journeys")
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["nurture_session"]["httpOnly"] and cookies["nurture_session"]["sameSite"] == (
        "Strict"
    )
    assert stack.key not in cookies["nurture_session"]["value"]
    row = page.locator("tr[data-journey=quickstart]")
    assert await row.locator(".entrants").inner_text() == "3"
    await _shot(page, "journeys")

    # The flowchart: the counts drawn are what the API and Postgres say.
    await page.click("tr[data-journey=quickstart] a")
    await page.wait_for_selector("svg.flowchart")
    node = page.locator("g.node[data-step=clicked_shop]")
    analytics = ok(await stack.api.get("/v1/journeys/quickstart/analytics"))
    counts = {s["step_id"]: s for s in analytics["steps"]}
    assert await node.get_attribute("data-now") == str(counts["clicked_shop"]["now"]) == "3"
    assert await _waiting_in_postgres(sessions, "clicked_shop") == 3
    assert "3 here now" in (await node.text_content() or "")
    welcome = page.locator("g.node[data-step=welcome]")
    assert await welcome.get_attribute("data-entered") == "3"
    assert await welcome.get_attribute("data-passed") == "3"
    funnel = page.locator(".funnel-box[data-step=welcome] rect[data-name=sent]")
    assert await funnel.get_attribute("data-value") == "3"

    # It keeps itself up to date: a fourth contact appears without reloading the page.
    dan = await _enroll(stack, "dan")
    await _wait_for(stack, dan["id"], lambda b: b["current_step"] == "clicked_shop")
    await page.wait_for_selector("g.node[data-step=clicked_shop][data-now='4']", timeout=15000)
    await _shot(page, "journey")

    # A node opens who is there now, each with its contact page and its Temporal trace.
    await node.click()
    await page.wait_for_selector("#here-now")
    assert await page.locator("#here-now a.contact").count() == 4
    trace = page.locator("#here-now tr", has_text="ada").locator("a.temporal")
    href = await trace.get_attribute("href") or ""
    assert href.startswith(f"{stack.temporal_ui}/namespaces/default/workflows/")
    assert href.endswith(quote(enrolled["ada"]["workflow_id"], safe=""))
    await _shot(page, "step")
    await page.locator("#here-now a.contact", has_text="ada").click()
    await page.wait_for_selector("#timeline")
    assert "ada@example.com" in await page.inner_text("#fields")
    assert "clicked_shop" in await page.inner_text("#enrollments")
    timeline = await page.inner_text("#timeline")
    assert "Sent email 'quickstart-welcome'" in timeline
    assert "Entered journey Quickstart" in timeline
    await _shot(page, "contact")

    # The mailbox: Ada's welcome as she sees it; her click on its tracked link moves her on.
    await page.click("nav >> text=Mailbox")
    await page.locator("#mailbox tr", has_text="ada@example.com").locator("a").click()
    frame = page.frame_locator("#message-body")
    link = frame.locator("a", has_text="Visit the shop")
    assert "/v1/t/c/" in (await link.get_attribute("href") or "")
    await _shot(page, "mailbox-message")
    async with context.expect_page() as popup_info:
        await link.click()
    await popup_info.value
    # The shop itself is not reachable offline: what matters is the tracked redirect to it.
    assert any("/v1/t/c/" in url for url in visited)
    ended = await _wait_for(stack, enrolled["ada"]["id"], lambda b: b["status"] == "completed")
    assert [p["step"] for p in ended["path"]] == [
        "welcome",
        "clicked_shop",
        "mark_interest",
        "thanks",
    ]
    await page.goto(f"{stack.url}/console/journeys/quickstart")
    await page.wait_for_selector("g.node[data-step=clicked_shop][data-now='3']", timeout=15000)
    assert await page.locator("g.node[data-step=thanks]").get_attribute("data-entered") == "1"
    clicks = page.locator(".funnel-box[data-step=welcome] rect[data-name=clicked]")
    assert await clicks.get_attribute("data-value") == "1"

    # Nothing was fetched from anywhere but the stack (the shop link aside).
    hosts = {urlsplit(url).hostname for url in visited}
    assert hosts <= {"127.0.0.1", "example.com"}, hosts
    await context.close()


async def test_api_docs_render_offline(stack: Stack, browser: Any) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    outside: list[str] = []

    async def local_only(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if host == "127.0.0.1":
            await route.continue_()
        else:  # no internet: anything from elsewhere fails, as it would offline
            outside.append(route.request.url)
            await route.abort()

    await context.route("**/*", local_only)
    await page.goto(f"{stack.url}/docs")
    await page.wait_for_selector(".opblock-tag-section", timeout=20000)
    assert "Nurture" in await page.locator(".info .title").first.inner_text()
    assert await page.locator(".opblock", has_text="/v1/journeys/{key}/analytics").count() >= 1
    await _shot(page, "docs")
    await page.goto(f"{stack.url}/redoc")
    await page.locator("h2", has_text="Per-step counts and per-send funnels").first.wait_for(
        timeout=20000
    )
    assert outside == []
    await context.close()


async def test_console_pages_need_a_session(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as anonymous:
        for path in ("/console/", "/console/mailbox", f"/console/contacts/{uuid.uuid4()}"):
            answer = await anonymous.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/console/login")
        # An API key is no session: the console never takes one in a URL or header.
        bearer = await stack.api.get("/console/")
        assert bearer.status_code == 303
        forged = await anonymous.get("/console/", headers={"Cookie": "nurture_session=x.y.z"})
        assert forged.status_code == 303
