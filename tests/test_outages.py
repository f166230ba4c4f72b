"""Postgres or Temporal really away: fast, honest answers (503 with Retry-After, a redirect at
once), nothing lost (clicks and webhooks spooled while Postgres is down and stored when it is
back; enrollments refused while Temporal is down started by the reconciler).

Temporal away is a dev server the client was connected to, then stopped (the SDK then retries
for ~10 s per call unless cut short). Postgres away is an embedded server of this module's own,
stopped and started again. The API runs under uvicorn on loopback, so the timings are what a
client sees (an in-process transport would wait for background tasks too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlmodel import col
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.resources import Resources
from nurture.apikeys import create_api_key
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.models import Enrollment, Event, Message, Suppression, WebhookEvent
from nurture.devstack import TemporalDevServer
from nurture.journeys.enrollments import EnrollmentOptions
from nurture.journeys.reconcile import PendingStarter
from nurture.settings import Settings
from nurture.tracking import Tracker
from tests.outage import StoppablePostgres, closed_port
from tests.support import (
    all_enrollments_ended,
    enroll_awaiting_click,
    exits_at_once,
    finish,
    make_contact,
    publish_journey,
)
from worker import build_worker

pytestmark = pytest.mark.slow

BASE = "http://nurture.test"
SECRET = "outage-test-secret-0123456789abcdef"
# "Within a second or two": the bound asserted on a 503 (the time limit on a Temporal call
# is 2 s), on a loaded CI machine. That a redirect does not wait for Temporal at all is checked
# by order rather than by a tighter bound (a commit once stalled a click for 3 s on CI).
FAST = 3.5
# A click while Postgres is away is spooled at once (a refused connection fails at once); below
# the 3 s a click would spend waiting to connect to a database that does not answer.
AT_ONCE = 2.0
POSTMARK = ("postmark-hook", "outage-pass")


@pytest.fixture(scope="module")
async def temporal_gone(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """A client that was connected to a Temporal dev server, which is now stopped."""
    host, port = closed_port().split(":")
    ui_port = int(closed_port().split(":")[1])
    server = await TemporalDevServer.start(
        tmp_path_factory.mktemp("temporal-gone"), host, int(port), ui_port, "default"
    )
    try:
        for _ in range(200):
            try:
                client = await Client.connect(
                    f"{host}:{port}", data_converter=pydantic_data_converter
                )
                await client.count_workflows()  # really answering, not just accepting
                break
            except Exception:
                await asyncio.sleep(0.25)
        else:
            raise AssertionError(f"the dev server did not start: {server.tail()}")
    finally:
        await server.stop()
    yield client


def _settings(task_queue: str, data_dir: Path) -> Settings:
    return Settings(
        database_url="unused-in-tests",
        temporal_task_queue=task_queue,
        temporal_ui_url="http://temporal-ui.test",
        public_base_url=BASE,
        secret_key=SecretStr(SECRET),
        allowed_hosts=["nurture.test"],
        data_dir=data_dir,
        postmark_webhook_username=POSTMARK[0],
        postmark_webhook_password=SecretStr(POSTMARK[1]),
    )


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """Serve an app under uvicorn on loopback; yields a function returning an HTTP client."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(app: Any, api_key: str | None = None) -> httpx.AsyncClient:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        headers = {"Host": "nurture.test"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", headers=headers, timeout=30
        )
        running.append((server, task, http))
        return http

    yield start
    for server, task, http in running:
        await http.aclose()
        server.should_exit = True
        await task


async def _timed(request: Any) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = await request
    return response, time.monotonic() - began


@contextlib.contextmanager
def _telling_ends() -> Iterator[asyncio.Event]:
    """Set when an attempt to tell an enrollment of an engagement ends with the event kept for
    redelivery (what `deliver_engagement` logs when Temporal is away)."""
    ended = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "kept for redelivery" in record.getMessage():
                ended.set()

    logger, handler = logging.getLogger("nurture.audience.events"), Watch(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield ended
    finally:
        logger.removeHandler(handler)


def _unavailable(response: httpx.Response, took: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert response.json()["error"] == "unavailable"
    assert took < FAST, took


async def test_while_temporal_is_down_the_api_answers_fast_and_pending_enrollments_start_later(
    sessions: SessionFactory,
    client: Client,
    temporal_gone: Client,
    task_queue: str,
    tmp_path: Path,
    serve: Any,
) -> None:
    await publish_journey(sessions, exits_at_once("solo", {"type": "api"}))
    contact_id = await make_contact(sessions)
    key = await create_api_key(sessions, "outage")
    app = create_app(Resources(_settings(task_queue, tmp_path), sessions, temporal_gone))
    http = await serve(app, key.secret)
    enroll = {"journey_key": "solo", "contact_id": str(contact_id)}

    response, took = await _timed(http.post("/v1/enrollments", json=enroll))
    _unavailable(response, took)
    assert "pending" in response.json()["detail"]
    response, took = await _timed(http.post("/v1/enrollments", json=enroll))  # asked again
    _unavailable(response, took)
    async with sessions() as session:
        enrollment = (await session.scalars(select(Enrollment))).one()  # one row, pending
    assert enrollment.status == "pending"

    response, took = await _timed(http.post(f"/v1/enrollments/{enrollment.id}/unenroll"))
    _unavailable(response, took)

    # A custom event is stored first: it is accepted (202) and delivered by the relay once
    # Temporal is back, so the client need not (and must not, without a key) send it again.
    response, took = await _timed(
        http.post("/v1/events", json={"contact_id": str(contact_id), "name": "signed_up"})
    )
    assert response.status_code == 202, response.text
    assert response.json()["signalled"] == 0
    assert took < FAST, took

    # A tracked click redirects at once; the enrollment is told in the background.
    async with sessions.begin() as session:
        message = Message(
            idempotency_key=f"{enrollment.id}:welcome:1",
            enrollment_id=enrollment.id,
            contact_id=contact_id,
            step_id="welcome",
            channel="email",
            template="welcome",
            status="sent",
        )
        session.add(message)
    url = Tracker(BASE, SECRET).click_url(message.id, "buy", "https://shop.test/buy")
    with _telling_ends() as told:
        response, took = await _timed(http.get(url.removeprefix(BASE)))
        assert response.status_code == 302
        assert took < FAST, took
        # The attempt to tell the enrollment (cut short after 2 s, Temporal being away) begins
        # once the redirect has gone: it had not ended when the person was redirected.
        assert not told.is_set(), took
        await asyncio.wait_for(told.wait(), 30)

    # Temporal is back (the test server): the worker's reconciler starts the pending one.
    async with build_worker(client, sessions, task_queue):
        starter = PendingStarter(
            sessions, client, EnrollmentOptions(task_queue), grace=timedelta(0)
        )
        assert await starter.start_pending() == 1
        await all_enrollments_ended(sessions, within=30)
    async with sessions() as session:
        ended = await session.get(Enrollment, enrollment.id)
        clicks = await session.scalar(
            select(func.count()).select_from(Event).where(col(Event.kind) == "click")
        )
    assert ended is not None and ended.status == "exited"
    assert clicks == 1  # kept for the worker's redelivery


async def test_a_client_pointed_at_a_closed_port_also_gets_a_fast_503(
    sessions: SessionFactory, task_queue: str, tmp_path: Path, serve: Any
) -> None:
    unreachable = await Client.connect(
        closed_port(), lazy=True, data_converter=pydantic_data_converter
    )
    await publish_journey(sessions, exits_at_once("solo", {"type": "api"}))
    contact_id = await make_contact(sessions)
    key = await create_api_key(sessions, "outage")
    app = create_app(Resources(_settings(task_queue, tmp_path), sessions, unreachable))
    http = await serve(app, key.secret)
    response, took = await _timed(
        http.post("/v1/enrollments", json={"journey_key": "solo", "contact_id": str(contact_id)})
    )
    _unavailable(response, took)


@pytest.fixture(scope="module")
def stoppable_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoppablePostgres]:
    server = StoppablePostgres(tmp_path_factory.mktemp("pg-outage") / "data")
    yield server
    server.cleanup()


async def test_while_postgres_is_down_requests_get_503_and_no_click_is_lost(
    stoppable_postgres: StoppablePostgres,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    serve: Any,
) -> None:
    postgres = stoppable_postgres
    await postgres.migrate()
    engine = create_engine(postgres.url)
    sessions = session_factory(engine)
    try:
        key = await create_api_key(sessions, "outage")
        app = create_app(Resources(_settings(task_queue, tmp_path), sessions, client))
        http = await serve(app, key.secret)
        async with build_worker(client, sessions, task_queue):
            # A contact got the welcome email and its journey waits a day for a click.
            waiting = await enroll_awaiting_click(http, sessions, client)
            tracker = Tracker(BASE, SECRET)
            click = tracker.click_url(waiting.message_id, "purchase", "https://shop.test/buy")

            await postgres.stop()
            try:
                response, took = await _timed(http.get(f"/v1/contacts/{waiting.contact_id}"))
                _unavailable(response, took)
                response, took = await _timed(
                    http.post(
                        "/v1/enrollments",
                        json={"journey_key": "benchmark-welcome", "contact_id": str(uuid.uuid4())},
                    )
                )
                _unavailable(response, took)
                for _ in range(10):  # ten clicks during the outage: each redirected at once
                    response, took = await _timed(http.get(click.removeprefix(BASE)))
                    assert response.status_code == 302
                    assert response.headers["location"] == "https://shop.test/buy"
                    assert took < AT_ONCE, took
                # A provider's report of an open (Postmark: basic auth, checked without the
                # database): accepted and kept, since not every provider retries for long.
                opened = {
                    "RecordType": "Open",
                    "MessageID": "pm-outage-1",
                    "ReceivedAt": "2026-12-01T10:00:00Z",
                    "Metadata": {"nurture_message_id": str(waiting.message_id)},
                }
                response = await http.post("/v1/webhooks/postmark", json=opened, auth=POSTMARK)
                assert response.status_code == 200, response.text
                response = await http.post(
                    "/v1/webhooks/postmark", json=opened, auth=("postmark-hook", "wrong")
                )
                assert response.status_code == 401  # still verified first
                # A mail client's one-click unsubscribe (RFC 8058): nobody sends it twice.
                response = await http.post(
                    tracker.unsubscribe_url(waiting.message_id).removeprefix(BASE),
                    content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                assert response.status_code == 200
                assert "Unsubscribed" in response.text
                spooled = list((tmp_path / "spool").iterdir())
                assert sum(len(p.read_bytes().splitlines()) for p in spooled) == 12
            finally:
                await postgres.start()

            # Back: the spool is drained into the database, and the journey hears of it.
            async with asyncio.timeout(60):
                while True:
                    async with sessions() as session:
                        kept = dict(
                            (
                                await session.execute(
                                    select(col(Event.kind), func.count()).group_by(col(Event.kind))
                                )
                            ).all()
                        )
                    drained = not list((tmp_path / "spool").iterdir())
                    if kept == {"click": 10, "open": 1} and drained:
                        break
                    await asyncio.sleep(0.2)
            async with sessions() as session:
                report = (await session.scalars(select(WebhookEvent))).one()
                unsubscribed = (await session.scalars(select(Suppression))).one()
            assert (report.kind, report.message_id) == ("opened", waiting.message_id)
            assert (unsubscribed.contact_id, unsubscribed.reason, unsubscribed.source) == (
                waiting.contact_id,
                "unsubscribed",
                "one_click",
            )
            result = await finish(env, waiting.handle)
            assert [p.step for p in result.path][-2:] == ["mark_paid", "to_customers"]
    finally:
        await engine.dispose()
