"""Test helpers: make contacts and journeys, run enrollments, read back what happened."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import EnrollmentEvent, EnrollmentProgress, EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Contact,
    ContactList,
    Enrollment,
    EnrollmentStep,
    Message,
    OutboxMessage,
    Segment,
    Template,
)
from nurture.journeys.enrollments import EnrollmentOptions, enroll
from nurture.journeys.publishing import publish, save_draft

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "journeys"


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of a response that must have this status (the body explains a mismatch)."""
    assert response.status_code == status, f"{response.request.url}: {response.text}"
    return response.json()


def problems(response: httpx.Response) -> dict[str, str]:
    """The `{path: message}` of a 422 in the standard error shape."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) <= {"error", "detail", "message"}
    return {p["path"]: p["message"] for p in body["detail"]}


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return data


async def make_contact(sessions: SessionFactory, **values: Any) -> uuid.UUID:
    values.setdefault("email", f"{uuid.uuid4().hex[:8]}@example.com")
    async with sessions.begin() as session:
        contact = Contact(**values)
        session.add(contact)
    return contact.id


async def make_lists(sessions: SessionFactory, *keys: str) -> None:
    async with sessions.begin() as session:
        for key in keys:
            session.add(ContactList(key=key, name=key))


async def make_templates(sessions: SessionFactory, definition: Mapping[str, Any]) -> None:
    """Create (if missing) a template for every send step, as content must exist to publish."""
    async with sessions.begin() as session:
        for step in definition["steps"].values():
            if step["type"] in ("send_email", "send_sms"):
                channel = "email" if step["type"] == "send_email" else "sms"
                # An SMS is a body only: publishing refuses one with a subject.
                subject = step["template"] if channel == "email" else None
                await session.execute(
                    insert(Template)
                    .values(key=step["template"], channel=channel, subject=subject, text="Hi")
                    .on_conflict_do_nothing()
                )


async def make_segments(sessions: SessionFactory, definition: Mapping[str, Any]) -> None:
    """Create (if missing) the segments a journey names, as they must exist to publish; a
    stand-in segment matches contacts tagged with its key."""
    named = [
        (definition.get("trigger") or {}).get("segment"),
        (definition.get("entry") or {}).get("exclusion_segment"),
    ]
    async with sessions.begin() as session:
        for key in filter(None, named):
            await session.execute(
                insert(Segment)
                .values(
                    id=uuid.uuid4(),
                    key=key,
                    name=key,
                    filter={"type": "tag", "tag": key, "op": "has"},
                )
                .on_conflict_do_nothing(index_elements=["key"])
            )


async def publish_journey(sessions: SessionFactory, definition: Mapping[str, Any]) -> int:
    await make_templates(sessions, definition)
    await make_segments(sessions, definition)
    async with sessions.begin() as session:
        await save_draft(session, dict(definition))
        version = await publish(session, definition["key"])
    return version.version


# Workflows started by the current test (recorded by conftest's client interceptor); those
# still running are terminated afterwards, since the test server stops skipping time while any
# activity waits for a worker that is gone.
STARTED: list[WorkflowHandle[Any, Any]] = []


async def start(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    journey_key: str,
    contact_id: uuid.UUID,
    max_steps_per_run: int = 500,
) -> tuple[Enrollment, WorkflowHandle[Any, EnrollmentResult]]:
    options = EnrollmentOptions(task_queue=task_queue, max_steps_per_run=max_steps_per_run)
    enrollment = await enroll(sessions, client, options, journey_key, contact_id)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    return enrollment, handle


async def finish(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, EnrollmentResult]
) -> EnrollmentResult:
    """Wait for the result with the test server's clock running free (days pass in moments).

    Only handles returned by the test client's own start_workflow unlock time skipping by
    themselves; enrollments are started by `nurture.journeys.enrollments.enroll`, so unlock it here.
    """
    # time_skipping_unlocked exists only on the time-skipping environment class, not the base.
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        for attempt in range(1, 4):
            try:
                return await handle.result()
            except RuntimeError as err:
                # The test server ends a long poll after ~20 s with no event; on a loaded
                # machine a journey can take longer than one poll, so ask again (bounded).
                if "No completion event found" not in str(err) or attempt == 3:
                    raise
    raise AssertionError("unreachable")


async def progress(handle: WorkflowHandle[Any, Any]) -> EnrollmentProgress:
    result: EnrollmentProgress = await handle.query("progress", result_type=EnrollmentProgress)
    return result


async def reach_step(handle: WorkflowHandle[Any, Any], step: str, within: float = 15) -> None:
    """Poll the workflow until it is at `step` (queries do not advance the test server's clock)."""
    async with asyncio.timeout(within):
        while True:
            current = await progress(handle)
            if current.current_step == step:
                return
            await asyncio.sleep(0.05)


async def signal_event(handle: WorkflowHandle[Any, Any], **fields: Any) -> EnrollmentEvent:
    fields.setdefault("event_id", str(uuid.uuid4()))
    event = EnrollmentEvent(**fields)
    await handle.signal("event", event)
    return event


async def sent_templates(sessions: SessionFactory, contact_id: uuid.UUID) -> list[str]:
    """Templates of messages that reached the outbox for this contact, in send order."""
    async with sessions() as session:
        rows = await session.scalars(
            select(col(Message.template))
            .where(col(Message.contact_id) == contact_id, col(Message.status) == "sent")
            .order_by(col(Message.created_at))
        )
        return list(rows)


async def outbox_count(sessions: SessionFactory) -> int:
    async with sessions() as session:
        return len((await session.scalars(select(col(OutboxMessage.id)))).all())


async def recorded_path(sessions: SessionFactory, enrollment_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(EnrollmentStep)
            .where(col(EnrollmentStep.enrollment_id) == enrollment_id)
            .order_by(col(EnrollmentStep.entered_at), col(EnrollmentStep.id))
        )
        return [row.step_id for row in rows]


async def reload(sessions: SessionFactory, model: type[Any], key: Any) -> Any:
    async with sessions() as session:
        return await session.get(model, key)


def steps_of(result: EnrollmentResult) -> Sequence[str]:
    return [entry.step for entry in result.path]


def exits_at_once(key: str, trigger: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A journey with this trigger that ends as soon as it starts (exit reason "done"):
    for tests about who enters, not what happens next."""
    return {
        "key": key,
        "name": key,
        "trigger": dict(trigger),
        "start": "done",
        "steps": {"done": {"type": "exit", "reason": "done"}},
        **extra,
    }


async def enrolled_in(sessions: SessionFactory, journey_key: str) -> list[str]:
    """External ids of the journey's enrollments, oldest first (a contact twice if twice)."""
    from nurture.db.models import Journey

    async with sessions() as session:
        rows = await session.scalars(
            select(col(Contact.external_id))
            .join(Enrollment, col(Enrollment.contact_id) == col(Contact.id))
            .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
            .where(col(Journey.key) == journey_key)
            .order_by(col(Enrollment.enrolled_at))
        )
        return [str(external_id) for external_id in rows]


async def all_enrollments_ended(
    sessions: SessionFactory, within: float = 30, poll: float = 0.05
) -> None:
    """Wait until no enrollment is pending or active."""
    async with asyncio.timeout(within):
        while True:
            async with sessions() as session:
                in_flight = await session.scalar(
                    select(func.count())
                    .select_from(Enrollment)
                    .where(col(Enrollment.status).in_(("pending", "active")))
                )
            if in_flight == 0:
                return
            await asyncio.sleep(poll)


@dataclass(frozen=True)
class AwaitingClick:
    """A contact enrolled through the API in the Benchmark seed, its welcome email sent and
    the journey waiting (step `wait_1d`) for a click on it."""

    contact_id: uuid.UUID
    enrollment: dict[str, Any]  # the API's answer to the enrollment
    handle: WorkflowHandle[Any, EnrollmentResult]
    message_id: uuid.UUID


async def enroll_awaiting_click(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client
) -> AwaitingClick:
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    contact_id = await make_contact(sessions)
    created = ok(
        await api.post(
            "/v1/enrollments",
            json={"journey_key": "benchmark-welcome", "contact_id": str(contact_id)},
        ),
        201,
    )
    handle = client.get_workflow_handle(created["workflow_id"], result_type=EnrollmentResult)
    await reach_step(handle, "wait_1d")
    async with sessions() as session:
        message_id = await session.scalar(
            select(col(Message.id)).where(col(Message.contact_id) == contact_id)
        )
    assert message_id is not None
    return AwaitingClick(contact_id, created, handle, message_id)


# Transaction commands SQLAlchemy sends through the driver; its own events count them.
_TRANSACTION_COMMANDS = {"BEGIN", "COMMIT", "ROLLBACK", "START", "SAVEPOINT", "RELEASE"}


def log_driver_statements(engine: AsyncEngine, sink: Callable[[str], None]) -> Callable[[], None]:
    """Call `sink` with every statement sent on the driver connection of `engine`'s pooled
    connections (`nurture.db.lean.driver_connection`), which SQLAlchemy's events do not see: asyncpg's
    query logger, added at checkout. Not transaction commands, nor the idle ping. asyncpg calls
    its loggers soon after the statement (`call_soon`): let the loop turn before reading what
    was logged. Returns the function that stops it."""

    def logged(query: Any) -> None:
        statement = " ".join(query.query.split())
        first = statement.split(" ")[0].rstrip(";").upper()
        if statement != ";" and first not in _TRANSACTION_COMMANDS:
            sink(statement)

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(logged)

    def checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            dbapi_connection.driver_connection.remove_query_logger(logged)

    event.listen(engine.sync_engine, "checkout", checkout)
    event.listen(engine.sync_engine, "checkin", checkin)

    def stop() -> None:
        event.remove(engine.sync_engine, "checkout", checkout)
        event.remove(engine.sync_engine, "checkin", checkin)

    return stop


@asynccontextmanager
async def app_client(
    app_sessions: SessionFactory, client: Client, settings: Any, key_sessions: SessionFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for an app (in-process ASGI) on `app_sessions` (an engine of the test's
    own: a tiny pool, statements counted), authenticated with a key made on `key_sessions`."""
    from api.app import create_app
    from api.resources import Resources
    from nurture.apikeys import create_api_key

    app = create_app(Resources(settings, app_sessions, client))
    key = await create_api_key(key_sessions, "tests")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://nurture.test",
        headers={"Authorization": f"Bearer {key.secret}"},
    ) as http:
        yield http
