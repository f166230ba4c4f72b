"""Recording events: persisted first (deduplicated), then signalled to enrollments.

Storing before signalling means an event is never lost when Temporal is unreachable: the row
is there to be delivered again, and re-delivery is harmless because enrollments ignore an
event id they have already seen. A repeated request (same idempotency key) is answered from
the stored row and signalled again, so a client retrying after a timeout gets the same result.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError

from nurture.audience.changes import Announcer, Change, record
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
from nurture.errors import Conflict, NotFound
from nurture.journeys.enrollments import (
    SERVER_AWAY,
    TEMPORAL_UNREACHABLE,
    EnrollmentOptions,
    signal_workflow,
)
from nurture.journeys.triggers import on_contact_changed

logger = logging.getLogger(__name__)

# A person clicking a link must not wait on retries.
_SIGNAL_TIME_LIMIT = 5.0


@dataclass(frozen=True)
class RecordedEvent:
    event: Event
    duplicate: bool
    signalled: int
    started_enrollments: list[uuid.UUID] = field(default_factory=list)


async def _store(
    sessions: SessionFactory, values: dict[str, Any], change: Change | None = None
) -> tuple[Event, bool, int | None]:
    """Store the event once per dedupe key; with `change`, a new event is recorded as a change
    of its contact in the same transaction. The event, whether it repeated, the change id."""
    async with sessions.begin() as session:
        inserted = await session.scalar(
            select(Event).from_statement(
                insert(Event)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(Event)
            )
        )
        if inserted is not None:
            change_id = None
            if change is not None:
                change_id = await record(session, replace(change, event_id=inserted.id))
            return inserted, False, change_id
        event = await session.scalar(  # a repeated request: the event stored the first time
            select(Event).where(col(Event.dedupe_key) == values["dedupe_key"])
        )
        assert event is not None
        if event.contact_id != values["contact_id"] or event.kind != values["kind"]:
            raise Conflict(
                f"idempotency key {values['dedupe_key']!r} was already used for another event"
            )
        return event, True, None


async def record_custom_event(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    contact_id: uuid.UUID,
    name: str,
    properties: dict[str, Any],
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "api",
) -> RecordedEvent:
    """Store a custom event as a change of its contact (`nurture.audience.changes`); its
    announcement signals it to the contact's enrollments, starts the journeys it triggers and
    re-checks the segments that look at events. A repeated request (same idempotency key)
    announces nothing new: the first one's change is announced, now or by the relay."""
    async with sessions() as session:
        if await session.get(Contact, contact_id) is None:
            raise NotFound(f"no contact {contact_id}")
    event, duplicate, change_id = await _store(
        sessions,
        {
            "dedupe_key": idempotency_key or f"custom:{uuid.uuid4()}",
            "contact_id": contact_id,
            "kind": "custom",
            "name": name,
            "properties": properties,
            "occurred_at": occurred_at or utcnow(),
        },
        Change(
            contact_id,
            source,
            {"event": {"name": name, "properties": properties}},
            reload=False,
        ),
    )
    announcer = Announcer(sessions, client, options)
    announced = await announcer.announce_now([change_id] if change_id is not None else [])
    # `signalled_at` stays NULL: it tracks opens and clicks for redelivery; a custom event is
    # delivered by its change's announcement (here, or by the relay if this one fails).
    return RecordedEvent(
        event, duplicate, announced.signalled, [e.id for e in announced.enrollments]
    )


async def record_engagement(
    sessions: SessionFactory,
    client: Client,
    message_id: uuid.UUID,
    kind: Literal["open", "click"],
    link: str | None = None,
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
    machine: bool = False,
    options: EnrollmentOptions | None = None,
) -> RecordedEvent:
    """An open or click of a message we sent, delivered to the enrollment that sent it.

    A machine open (a mail proxy or scanner fetching the pixel) is stored but not signalled:
    journeys branch on people. If Temporal cannot be reached the event stays stored with
    `signalled_at` NULL and `redeliver_engagement` delivers it later; the caller (a redirect a
    person is waiting for) is not failed for it.

    With `options`, an open or click also re-checks the segments that start journeys ("opened
    an email in the last 7 days"); an entry that cannot be admitted now is left to the sweep."""
    stored = await store_engagement(
        sessions, message_id, kind, link, idempotency_key, occurred_at, machine
    )
    return await deliver_engagement(sessions, client, stored, options)


@dataclass(frozen=True)
class StoredEngagement:
    event: Event
    message: Message
    duplicate: bool


async def store_engagement(
    sessions: SessionFactory,
    message_id: uuid.UUID,
    kind: Literal["open", "click"],
    link: str | None = None,
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
    machine: bool = False,
) -> StoredEngagement:
    """The first half of `record_engagement`: the event stored (once per idempotency key),
    not yet delivered. Tracked links store, answer, then deliver in the background."""
    async with sessions() as session:
        message = await session.get(Message, message_id)
        if message is None:
            raise NotFound(f"no message {message_id}")
    event, duplicate, _ = await _store(
        sessions,
        {
            "dedupe_key": idempotency_key or f"{kind}:{uuid.uuid4()}",
            "contact_id": message.contact_id,
            "kind": kind,
            "message_id": message.id,
            "link": link,
            "properties": {},
            "machine": machine,
            "occurred_at": occurred_at or utcnow(),
        },
    )
    return StoredEngagement(event, message, duplicate)


async def deliver_engagement(
    sessions: SessionFactory,
    client: Client,
    stored: StoredEngagement,
    options: EnrollmentOptions | None = None,
) -> RecordedEvent:
    """The second half of `record_engagement`: signal the enrollment (Temporal away: left for
    `redeliver_engagement`), then let the contact's change start journeys."""
    event, message, duplicate = stored.event, stored.message, stored.duplicate
    if event.machine:
        return RecordedEvent(event, duplicate, 0)
    try:
        async with asyncio.timeout(_SIGNAL_TIME_LIMIT):
            signalled = await _signal_engagement(sessions, client, event, message)
    except TEMPORAL_UNREACHABLE as err:
        logger.warning("event %s kept for redelivery: Temporal unavailable (%s)", event.id, err)
        return RecordedEvent(event, duplicate, 0)
    started: list[uuid.UUID] = []
    if options is not None and not duplicate and message.contact_id is not None:
        entered = await on_contact_changed(sessions, client, options, message.contact_id)
        started = [enrollment.id for enrollment in entered]
    return RecordedEvent(event, duplicate, int(signalled), started)


async def _signal_engagement(
    sessions: SessionFactory, client: Client, event: Event, message: Message
) -> bool:
    """Signal the enrollment that sent the message (if it still runs), then mark the event
    delivered. Raises RPCError when Temporal is unreachable, leaving it due."""
    async with sessions() as session:
        enrollment = (
            await session.get(Enrollment, message.enrollment_id) if message.enrollment_id else None
        )
    signalled = False
    if enrollment is not None and enrollment.status in ACTIVE_ENROLLMENT_STATUSES:
        # The message key is {enrollment}:{step}:{visit}: which send of the step this was.
        visit = int(message.idempotency_key.rsplit(":", 1)[1])
        signal = EnrollmentEvent(
            event_id=event.dedupe_key,
            kind="click" if event.kind == "click" else "open",
            step=message.step_id,
            visit=visit,
            link=event.link,
            occurred_at=event.occurred_at,
        )
        signalled = await signal_workflow(client, enrollment.workflow_id, "event", signal)
    async with sessions.begin() as session:
        await session.execute(
            update(Event).where(col(Event.id) == event.id).values(signalled_at=utcnow())
        )
    return signalled


async def redeliver_engagement(sessions: SessionFactory, client: Client, limit: int = 500) -> int:
    """Signal the opens and clicks stored while Temporal was unreachable; how many went out.

    Enrollments ignore an event id they have already seen, so delivering twice is harmless."""
    async with sessions() as session:
        rows = (
            await session.execute(
                select(Event, Message)
                .join(Message, col(Message.id) == col(Event.message_id))
                .where(
                    col(Event.signalled_at).is_(None),
                    col(Event.machine).is_(False),
                    col(Event.kind).in_(("open", "click")),
                )
                .order_by(col(Event.received_at))
                .limit(limit)
            )
        ).all()
    delivered = 0
    for event, message in rows:
        try:
            async with asyncio.timeout(_SIGNAL_TIME_LIMIT):
                await _signal_engagement(sessions, client, event, message)
        except RPCError as err:
            if err.status not in SERVER_AWAY:
                # This one workflow refused it (e.g. a limit of its own): the others' events
                # must not wait behind it. It stays due for the next round.
                logger.warning("event %s not redelivered: %s", event.id, err)
                continue
            logger.warning("redelivery paused: Temporal unavailable (%s)", err)
            break
        except TEMPORAL_UNREACHABLE as err:
            logger.warning("redelivery paused: Temporal unavailable (%s)", err)
            break
        delivered += 1
    return delivered


async def keep_redelivering(
    sessions: SessionFactory, client: Client, every: timedelta = timedelta(seconds=30)
) -> None:
    """Run `redeliver_engagement` every so often, for as long as the process lives (the worker
    runs it beside its pollers)."""
    while True:
        try:
            delivered = await redeliver_engagement(sessions, client)
            if delivered:
                logger.info("redelivered %d opens and clicks to their enrollments", delivered)
        except Exception:  # the database may be away too: try again next round
            logger.exception("redelivery round failed")
        await asyncio.sleep(every.total_seconds())
