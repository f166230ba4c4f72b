"""Recording events: persisted first (deduplicated), then signalled to enrollments.

Storing before signalling means an event is never lost when Temporal is unreachable: the row
is there to be delivered again, and re-delivery is harmless because enrollments ignore an
event id they have already seen. A repeated request (same idempotency key) is answered from
the stored row and signalled again, so a client retrying after a timeout gets the same result.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from temporalio.client import Client

from nurture.contracts import EnrollmentEvent
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    Contact,
    Enrollment,
    Event,
    Message,
    utcnow,
)
from nurture.enrollments import EnrollmentOptions, signal_contact_enrollments, signal_workflow
from nurture.errors import Conflict, NotFound
from nurture.triggers import on_event


@dataclass(frozen=True)
class RecordedEvent:
    event: Event
    duplicate: bool
    signalled: int
    started_enrollments: list[uuid.UUID] = field(default_factory=list)


async def _store(sessions: SessionFactory, values: dict[str, Any]) -> tuple[Event, bool]:
    async with sessions.begin() as session:
        inserted = await session.scalar(
            insert(Event)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(col(Event.id))
        )
        event = await session.scalar(
            select(Event).where(col(Event.dedupe_key) == values["dedupe_key"])
        )
        assert event is not None
        if inserted is None and (
            event.contact_id != values["contact_id"] or event.kind != values["kind"]
        ):
            raise Conflict(
                f"idempotency key {values['dedupe_key']!r} was already used for another event"
            )
        return event, inserted is None


async def record_custom_event(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    contact_id: uuid.UUID,
    name: str,
    properties: dict[str, Any],
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
) -> RecordedEvent:
    async with sessions() as session:
        if await session.get(Contact, contact_id) is None:
            raise NotFound(f"no contact {contact_id}")
    event, duplicate = await _store(
        sessions,
        {
            "dedupe_key": idempotency_key or f"custom:{uuid.uuid4()}",
            "contact_id": contact_id,
            "kind": "custom",
            "name": name,
            "properties": properties,
            "occurred_at": occurred_at or utcnow(),
        },
    )
    signal = EnrollmentEvent(
        event_id=event.dedupe_key,
        kind="custom",
        name=event.name,
        properties=event.properties,
        occurred_at=event.occurred_at,
    )
    signalled = await signal_contact_enrollments(sessions, client, contact_id, "event", signal)
    started = await on_event(sessions, client, options, contact_id, name, event.properties)
    return RecordedEvent(event, duplicate, signalled, [e.id for e in started])


async def record_engagement(
    sessions: SessionFactory,
    client: Client,
    message_id: uuid.UUID,
    kind: Literal["open", "click"],
    link: str | None = None,
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
) -> RecordedEvent:
    """An open or click of a message we sent, delivered to the enrollment that sent it."""
    async with sessions() as session:
        message = await session.get(Message, message_id)
        if message is None:
            raise NotFound(f"no message {message_id}")
        enrollment = (
            await session.get(Enrollment, message.enrollment_id) if message.enrollment_id else None
        )
    event, duplicate = await _store(
        sessions,
        {
            "dedupe_key": idempotency_key or f"{kind}:{uuid.uuid4()}",
            "contact_id": message.contact_id,
            "kind": kind,
            "message_id": message.id,
            "link": link,
            "properties": {},
            "occurred_at": occurred_at or utcnow(),
        },
    )
    signalled = False
    if enrollment is not None and enrollment.status in ACTIVE_ENROLLMENT_STATUSES:
        # The message key is {enrollment}:{step}:{visit}: which send of the step this was.
        visit = int(message.idempotency_key.rsplit(":", 1)[1])
        signal = EnrollmentEvent(
            event_id=event.dedupe_key,
            kind=kind,
            step=message.step_id,
            visit=visit,
            link=link,
            occurred_at=event.occurred_at,
        )
        signalled = await signal_workflow(client, enrollment.workflow_id, "event", signal)
    return RecordedEvent(event, duplicate, int(signalled))
