"""The API's hot paths make a small, fixed number of Postgres round trips on one pooled
connection at a time (issue 11, item 2; docs/benchmarks.md).

Round trips are counted with SQLAlchemy event listeners on a fresh engine: every statement
(`before_cursor_execute`) and every BEGIN / COMMIT / ROLLBACK that reaches Postgres (SQLAlchemy's
transaction events on a connection that is not in autocommit mode); and with asyncpg's query
logger on each of its connections, every statement sent on the driver connection itself
(`nurture.db.lean.driver_connection`), which SQLAlchemy does not see. Pooled connections are
counted at checkout and checkin, with the most held at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.enrollment import EnrollmentActivities
from activities.messaging import MessagingActivities
from api.app import create_app
from api.resources import Resources
from nurture.apikeys import create_api_key
from nurture.contracts import (
    EnrollmentFinished,
    LoadContact,
    SendRequest,
    StepEntered,
    StepOutcome,
)
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.models import Enrollment, EnrollmentStep, Template
from nurture.journeys.enrollments import EnrollmentOptions, enroll
from nurture.settings import Settings
from tests.support import log_driver_statements, make_contact, outbox_count, publish_journey
from worker import default_channels

# The bounds this test holds the request paths to (see docs/benchmarks.md, "API path").
ENROLL_ROUND_TRIPS = 3  # the claim's read, its insert, the pause catch-up read
EVENT_ROUND_TRIPS = 2  # the event, its change and the lookups in one statement; announced mark

WAITING: dict[str, Any] = {
    "key": "rt-wait",
    "name": "Round trips",
    "start": "ping",
    "steps": {
        "ping": {
            "type": "wait_for",
            "event": {"type": "custom", "name": "rt-ping"},
            "timeout": "30d",
        }
    },
}


@dataclass
class Counter:
    statements: list[str] = field(default_factory=list)
    held: int = 0
    most_held: int = 0
    checkouts: int = 0

    def reset(self) -> None:
        self.statements.clear()
        self.most_held = self.held
        self.checkouts = 0


def count_round_trips(engine: AsyncEngine) -> Counter:
    counter = Counter()
    sync = engine.sync_engine

    def autocommit(conn: Connection) -> bool:
        return conn.get_isolation_level() == "AUTOCOMMIT" or (
            conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        )

    @event.listens_for(sync, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counter.statements.append(" ".join(statement.split())[:80])

    for name in ("begin", "commit", "rollback"):

        def _transaction(conn: Connection, name: str = name) -> None:
            if not autocommit(conn):
                counter.statements.append(name.upper())

        event.listen(sync, name, _transaction)

    log_driver_statements(engine, lambda statement: counter.statements.append(statement[:80]))

    @event.listens_for(sync, "checkout")
    def _checkout(*args: Any) -> None:
        counter.held += 1
        counter.checkouts += 1
        counter.most_held = max(counter.most_held, counter.held)

    @event.listens_for(sync, "checkin")
    def _checkin(*args: Any) -> None:
        counter.held -= 1

    return counter


@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[tuple[SessionFactory, Counter]]:
    engine = create_engine(database_url)
    counter = count_round_trips(engine)
    yield session_factory(engine), counter
    await engine.dispose()


# A worker, so that the enrollments settle: the test server never skips time again after a
# workflow with a task due is terminated (tests/conftest.py, _terminate_started).
@pytest.mark.usefixtures("worker")
async def test_enroll_and_event_requests_make_few_round_trips(
    sessions: SessionFactory,
    client: Client,
    settings: Settings,
    counted: tuple[SessionFactory, Counter],
) -> None:
    counted_sessions, counter = counted
    # The counter sees what a plain transaction sends, so it can see a regression too.
    async with counted_sessions.begin() as session:
        await session.execute(text("SELECT 1"))
    assert counter.statements == ["BEGIN", "SELECT 1", "COMMIT"]
    await publish_journey(sessions, WAITING)
    contacts = [await make_contact(sessions, external_id=f"rt-{i}") for i in range(3)]
    key = await create_api_key(sessions, "round-trips")
    app = create_app(Resources(settings, counted_sessions, client))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://nurture.test",
        headers={"Authorization": f"Bearer {key.secret}"},
    ) as http:

        async def enroll(contact: uuid.UUID) -> list[str]:
            counter.reset()
            answer = await http.post(
                "/v1/enrollments", json={"journey_key": "rt-wait", "contact_id": str(contact)}
            )
            assert answer.status_code == 201, answer.text
            assert answer.json()["journey_key"] == "rt-wait"
            await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after, not at once
            assert counter.most_held == 1
            return list(counter.statements)

        async def ping(contact: uuid.UUID) -> list[str]:
            counter.reset()
            answer = await http.post(
                "/v1/events", json={"contact_id": str(contact), "name": "rt-ping"}
            )
            assert answer.status_code == 202, answer.text
            assert answer.json()["signalled"] == 1  # the enrollment waiting for it
            await asyncio.sleep(0.05)  # as above
            assert counter.most_held == 1
            return list(counter.statements)

        # The first request of a connection prepares its statements (and checks the key):
        # warm up, then count.
        await enroll(contacts[0])
        await ping(contacts[0])
        enrolled = [await enroll(contact) for contact in contacts[1:]]
        pinged = [await ping(contact) for contact in contacts[1:]]

    for statements in enrolled:
        assert len(statements) <= ENROLL_ROUND_TRIPS, statements
        # Counted wherever it was sent from (SQLAlchemy or the driver connection).
        assert any(s.startswith("INSERT INTO enrollments") for s in statements), statements
    for statements in pinged:
        assert len(statements) <= EVENT_ROUND_TRIPS, statements
        assert any(s.startswith("UPDATE contact_changes") for s in statements), statements


async def test_a_repeated_event_and_an_unknown_contact_are_still_answered(
    sessions: SessionFactory, client: Client, settings: Settings
) -> None:
    """The one-statement path keeps the slow path's answers: a repeated idempotency key gives
    the stored event (duplicate, nothing signalled), a key used for another contact a 409, an
    unknown contact a 404 naming it."""
    first = await make_contact(sessions, external_id="rt-a")
    await make_contact(sessions, external_id="rt-b")
    key = await create_api_key(sessions, "round-trips")
    app = create_app(Resources(settings, sessions, client))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://nurture.test",
        headers={"Authorization": f"Bearer {key.secret}"},
    ) as http:
        body = {"external_id": "rt-a", "name": "visit", "idempotency_key": "k-1"}
        stored = await http.post("/v1/events", json=body)
        again = await http.post("/v1/events", json=body)
        other = await http.post("/v1/events", json={**body, "external_id": "rt-b"})
        missing = await http.post("/v1/events", json={**body, "external_id": "nobody"})
        enroll_missing = await http.post(
            "/v1/enrollments", json={"journey_key": "nope", "external_id": "rt-a"}
        )

    assert stored.status_code == 202, stored.text
    assert stored.json()["duplicate"] is False
    assert stored.json()["contact_id"] == str(first)
    assert again.status_code == 202, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["id"] == stored.json()["id"]
    assert again.json()["signalled"] == 0
    assert other.status_code == 409, other.text
    assert missing.status_code == 404
    assert "nobody" in missing.json()["detail"]
    assert enroll_missing.status_code == 404
    assert enroll_missing.json()["detail"] == "no journey 'nope'"


# The worker's hot activities (docs/benchmarks.md, "Fewer round trips on the worker"): what a
# broadcast enrollment costs Postgres besides its start.
LOAD_CONTACT_ROUND_TRIPS = 1  # the stale mark cleared, the contact and its lists
RECORD_STEPS_ROUND_TRIPS = 1  # the path rows and the current step
FINISH_ROUND_TRIPS = 1  # the last path rows and the end
# The path with everything the decision reads; the message row with its claim; the outbox's
# delivery; the outcome with the check for webhooks that came first.
NEW_SEND_ROUND_TRIPS = 4


@pytest.mark.usefixtures("worker")
async def test_the_worker_hot_activities_make_few_round_trips(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    counted: tuple[SessionFactory, Counter],
) -> None:
    counted_sessions, counter = counted
    await publish_journey(sessions, WAITING)
    async with sessions.begin() as session:
        session.add(Template(key="rt-hello", channel="email", subject="Hi {{ fields.name }}",
                             text="Hello {{ fields.name }}"))  # fmt: skip
    contact = await make_contact(sessions, email="rt@example.com", fields={"name": "Ada"})
    options = EnrollmentOptions(task_queue)
    enrollment = (await enroll(sessions, client, options, "rt-wait", contact)).id
    path = EnrollmentActivities(counted_sessions)
    messaging = MessagingActivities(
        counted_sessions, default_channels(counted_sessions), Settings(), client, options
    )
    now = datetime.now(UTC)

    def entered(step: str, at: datetime, previous: str | None = None) -> StepEntered:
        done = StepOutcome(step=previous, visit=1, outcome="ok") if previous else None
        return StepEntered(enrollment_id=enrollment, step=step, step_type="branch", visit=1,
                           at=at, previous=done)  # fmt: skip

    def request(step: str, progress: list[StepEntered]) -> SendRequest:
        return SendRequest(idempotency_key=f"{enrollment}:{step}:1", enrollment_id=enrollment,
                           contact_id=contact, journey_key="rt-wait", step=step, channel="email",
                           template="rt-hello", progress=progress, visit=1, at=now)  # fmt: skip

    async def run(method: Any, argument: Any) -> tuple[Any, list[str]]:
        counter.reset()
        result = await ActivityEnvironment().run(method, argument)
        await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after
        assert counter.most_held <= 1
        return result, list(counter.statements)

    # A first pass prepares each statement on the pooled connection; the second is counted.
    for n, warm in enumerate(("warm", "counted")):
        at = now + timedelta(minutes=n)
        facts, loaded = await run(path.load_contact, LoadContact(enrollment_id=enrollment,
                                                                 contact_id=contact))  # fmt: skip
        assert facts.exists and facts.fields == {"name": "Ada"}
        _, recorded = await run(path.record_steps, [entered(f"{warm}-a", at),
                                                    entered(f"{warm}-b", at, f"{warm}-a")])  # fmt: skip
        sent, sending = await run(
            messaging.send_message,
            request(f"{warm}-send", [entered(f"{warm}-send", at, f"{warm}-b")]),
        )
        assert sent.status == "sent", sent
    assert len(loaded) == LOAD_CONTACT_ROUND_TRIPS, loaded
    assert len(recorded) == RECORD_STEPS_ROUND_TRIPS, recorded
    assert len(sending) == NEW_SEND_ROUND_TRIPS, sending
    assert sum("INSERT INTO outbox_messages" in s for s in sending) == 1, sending

    # A retry of the send finds its message: nothing sent again, on the locking path.
    again, _ = await run(messaging.send_message, request("counted-send", []))
    assert (again.status, again.message_id) == ("sent", sent.message_id)
    assert await outbox_count(sessions) == 2

    finished = EnrollmentFinished(enrollment_id=enrollment, status="completed", reason=None,
                                  at=now + timedelta(minutes=5),
                                  last=StepOutcome(step="counted-send", visit=1, outcome="sent"))  # fmt: skip
    _, finishing = await run(path.finish_enrollment, finished)
    assert len(finishing) == FINISH_ROUND_TRIPS, finishing
    # What those statements wrote: each step closed by the next, the last by the end.
    async with sessions() as session:
        rows = (
            await session.execute(
                select(
                    col(EnrollmentStep.step_id),
                    col(EnrollmentStep.left_at),
                    col(EnrollmentStep.outcome),
                )
                .where(col(EnrollmentStep.enrollment_id) == enrollment)
                .where(col(EnrollmentStep.step_id).like("counted-%"))
                .order_by(col(EnrollmentStep.id))
            )
        ).all()
        row = await session.get(Enrollment, enrollment)
    assert [tuple(r) for r in rows] == [
        ("counted-a", at, "ok"),
        ("counted-b", at, "ok"),
        ("counted-send", now + timedelta(minutes=5), "sent"),
    ]
    assert row is not None and (row.status, row.current_step) == ("completed", "counted-send")
    assert row.ended_at == now + timedelta(minutes=5)
