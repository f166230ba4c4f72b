"""Recording events: persisted first (deduplicated), then signalled to enrollments.

Storing before signalling means an event is never lost when Temporal is unreachable: the row
is there to be delivered again, and re-delivery is harmless because enrollments ignore an
event id they have already seen. A repeated request (same idempotency key) is answered from
the stored row and signalled again, so a client retrying after a timeout gets the same result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client

from nurture.audience.changes import LEASE, Announcer, Change, FreshChange, record
from nurture.audience.limits import SizeLimits
from nurture.concurrency import gather_limited, gather_limited_outcomes
from nurture.contracts import EnrollmentEvent
from nurture.db.engine import SessionFactory
from nurture.db.lean import autocommit, driver_connection
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    ContactChangeRecord,
    Enrollment,
    Event,
    Message,
    utcnow,
)
from nurture.db.together import ask_together
from nurture.errors import Conflict, NotFound, NurtureError
from nurture.journeys.enrollments import (
    TEMPORAL_UNREACHABLE,
    EnrollmentOptions,
    no_such_contact,
    signal_workflow,
)
from nurture.journeys.triggers import on_contact_changed
from nurture.scoring import rescore, wants_engagement, with_score

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
            else:
                change_id = await _score_engagement(session, inserted)
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


async def _score_engagement(session: AsyncSession, event: Event) -> int | None:
    """An open or click by a person, passed to lead scoring (`nurture.scoring`); the change
    id when it moved the score (recorded through the change path), else None."""
    if event.machine or event.contact_id is None or event.kind not in ("open", "click"):
        return None
    if not await wants_engagement(session, event.kind):
        return None
    seen = {"kind": event.kind, "link": event.link, "event_id": str(event.id)}
    pair = await rescore(session, event.contact_id, {"engagement": seen})
    if pair is None:
        return None
    # Left to the relay unless the caller announces it at once (`record_engagement`).
    return await record(
        session,
        Change(event.contact_id, f"scoring:{event.kind}", with_score({}, pair)),
        announce_here=False,
    )


# Custom events from the API in one statement, however many: each contact resolved (by id or
# external id), each event stored once per dedupe key, its change recorded (with the lease that
# lets this process announce it), and what the announcement needs read in the same snapshot: the
# contact's in-flight enrollments, whether a live journey starts on the event, whether any
# segment is watched. One round trip; a single statement is atomic by itself, so every event and
# its change commit together. When a lead scoring rule counts events, nothing is written here:
# each event takes the change path's `record`, which scores it (`nurture.scoring`).
# An event whose contact is not found has no row in the answer; a repeated dedupe key (earlier,
# or earlier in the same statement: ON CONFLICT DO NOTHING skips it) has no change.
# `{found}` is the events with their contacts found (n, found, event_id, dedupe_key, name,
# properties, occurred_at, changes). Sent on the driver connection (`nurture.db.lean`).
_CUSTOM_EVENTS = """
WITH {found},
s AS (SELECT EXISTS(SELECT 1 FROM scoring_rules WHERE kind = 'event') AS scored),
w AS (SELECT EXISTS(SELECT 1 FROM journeys j WHERE j.trigger_type IN ('segment_entered', 'segment')
                    AND j.status IN ('active', 'paused')) AS watched),
ev AS (
  INSERT INTO events (id, dedupe_key, contact_id, kind, name, properties, machine, occurred_at,
                      received_at)
  SELECT c.event_id, c.dedupe_key, c.found, 'custom', c.name, c.properties::jsonb, false,
         c.occurred_at, now()
  FROM c, s WHERE NOT s.scored ORDER BY c.n
  ON CONFLICT (dedupe_key) DO NOTHING
  RETURNING id, received_at),
ch AS (
  INSERT INTO contact_changes (contact_id, at, source, changes, joined_lists, event_id, reload,
                               lease_until)
  SELECT c.found, now(), {source}::text, c.changes::jsonb, '{{}}', ev.id, false,
         now() + {lease}::interval
  FROM c JOIN ev ON ev.id = c.event_id ORDER BY c.n
  RETURNING id, at, event_id)
SELECT c.n, c.found AS contact_id, s.scored, w.watched, ev.received_at, ch.id AS change_id, ch.at,
  ARRAY(SELECT e.workflow_id FROM enrollments e
        WHERE e.contact_id = c.found AND e.status IN ('pending', 'active')) AS in_flight,
  EXISTS(SELECT 1 FROM journeys j WHERE j.trigger_type = 'event' AND j.trigger_key = c.name
         AND j.status IN ('active', 'paused')) AS may_start
FROM c CROSS JOIN s CROSS JOIN w
LEFT JOIN ev ON ev.id = c.event_id LEFT JOIN ch ON ch.event_id = c.event_id
"""
# One event ($1 its contact): plain parameters. The batch's arrays cost Postgres about 1 ms
# more for a single event (measured in bench.run's (b), docs/benchmarks.md).
_ONE = """c AS (
  SELECT 0 AS n, k.id AS found, $2::uuid AS event_id, $3::text AS dedupe_key, $4::text AS name,
         $5::text AS properties, $6::timestamptz AS occurred_at, $7::text AS changes
  FROM contacts k WHERE {contact})"""
_ONE_BY_ID = _CUSTOM_EVENTS.format(
    found=_ONE.format(contact="k.id = $1::uuid"), source="$8", lease="$9"
)
_ONE_BY_EXTERNAL_ID = _CUSTOM_EVENTS.format(
    found=_ONE.format(contact="k.external_id = $1::text"), source="$8", lease="$9"
)
# Many events: an array per column, one element per event; a contact by id or external id.
_MANY = _CUSTOM_EVENTS.format(
    found="""i AS (
  SELECT * FROM unnest($1::int[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                       $7::text[], $8::timestamptz[], $9::text[])
    AS t(n, contact_id, external_id, event_id, dedupe_key, name, properties, occurred_at,
         changes)),
c AS (
  SELECT i.*, k.id AS found FROM i JOIN contacts k ON k.id = i.contact_id
  UNION ALL
  SELECT i.*, k.id FROM i JOIN contacts k ON k.external_id = i.external_id)""",
    source="$10",
    lease="$11",
)

# Events of one request announced at once (their contacts' in order, see below).
_ANNOUNCE_CONCURRENCY = 32


@dataclass(frozen=True)
class IncomingEvent:
    """A custom event as a caller sends it: for a contact by id, or by external id (a str)."""

    contact: uuid.UUID | str
    name: str
    properties: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    occurred_at: datetime | None = None


async def record_custom_event(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    contact_id: uuid.UUID | str,
    name: str,
    properties: dict[str, Any],
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "api",
) -> RecordedEvent:
    """Store a custom event as a change of its contact (`nurture.audience.changes`); its
    announcement signals it to the contact's enrollments, starts the journeys it triggers and
    re-checks the segments that look at events. A repeated request (same idempotency key)
    announces nothing new: the first one's change is announced, now or by the relay.

    `contact_id` may be the contact's external id (a str). A new event costs one statement
    before its signals and one after (the change marked announced)."""
    incoming = IncomingEvent(contact_id, name, properties, idempotency_key, occurred_at)
    (outcome,) = await record_custom_events(sessions, client, options, [incoming], source)
    if isinstance(outcome, NurtureError):
        raise outcome
    return outcome


async def record_custom_events(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    incoming: Sequence[IncomingEvent],
    source: str = "api",
) -> list[RecordedEvent | NurtureError]:
    """`record_custom_event` for many events at once (a batch request): all of them stored
    with their changes in one statement, then announced, the events of one contact in the
    order given and different contacts at the same time. Each event's outcome in its place:
    what it recorded, or the error `record_custom_event` would have raised for it alone (an
    unknown contact, an idempotency key of another event, properties over the size limits);
    one event's error does not stop the others."""
    outcomes: list[RecordedEvent | NurtureError | None] = [None] * len(incoming)
    events: dict[int, Event] = {}
    limits = SizeLimits.of()
    for n, one in enumerate(incoming):
        try:
            limits.check_event_properties(one.properties)
        except NurtureError as err:
            outcomes[n] = err
            continue
        now = utcnow()
        # Every field given: a default left to pydantic costs it a signature inspection of
        # its factory on each construction (about 40 % of this model's cost).
        events[n] = Event(
            id=uuid.uuid4(),
            dedupe_key=one.idempotency_key or f"custom:{uuid.uuid4()}",
            contact_id=None,
            kind="custom",
            name=one.name,
            message_id=None,
            link=None,
            properties=one.properties,
            machine=False,
            occurred_at=one.occurred_at or now,
            received_at=now,
            signalled_at=None,
        )
    changes = {
        n: {"event": {"name": e.name, "properties": e.properties}} for n, e in events.items()
    }
    rows = await _store_custom_events(sessions, incoming, events, changes, source)
    fresh: dict[int, FreshChange] = {}
    later: list[int] = []  # scored or repeated: the slower paths, one event at a time
    for n, event in events.items():
        found = rows.get(n)
        if found is None:
            outcomes[n] = no_such_contact(incoming[n].contact)
            continue
        event.contact_id = found["contact_id"]
        if found["scored"] or found["change_id"] is None:
            later.append(n)
            continue
        event.received_at = found["received_at"]
        row = ContactChangeRecord(  # every field given, as for the event above
            id=found["change_id"],
            contact_id=found["contact_id"],
            at=found["at"],
            source=source[:160],
            changes=changes[n],
            joined_lists=[],
            event_id=event.id,
            reload=False,
            origin_enrollment_id=None,
            lease_until=None,
            announced_at=None,
        )
        fresh[n] = FreshChange(
            row, event, found["in_flight"] or [], found["may_start"], found["watched"]
        )

    announcer = Announcer(sessions, client, options)

    async def announce(positions: list[int]) -> None:
        for n in positions:  # one contact's events, in the order given
            event = events[n]
            try:
                if n in fresh:
                    done = await announcer.announce_fresh(fresh[n])
                    # `signalled_at` stays NULL: it tracks opens and clicks for redelivery; a
                    # custom event is delivered by its change's announcement (here, or by the
                    # relay if this one fails).
                    outcomes[n] = RecordedEvent(
                        event, False, done.signalled, [e.id for e in done.enrollments]
                    )
                elif rows[n]["scored"]:
                    outcomes[n] = await _record_scored_event(
                        sessions, client, options, event, source
                    )
                else:  # a repeated key: the event stored the first time
                    stored, _, _ = await _store(
                        sessions, {**event.model_dump(), "id": uuid.uuid4()}
                    )
                    outcomes[n] = RecordedEvent(stored, True, 0)
            except NurtureError as err:
                outcomes[n] = err

    by_contact: dict[uuid.UUID, list[int]] = {}
    for n in sorted([*fresh, *later]):
        by_contact.setdefault(rows[n]["contact_id"], []).append(n)
    # Every event was stored before any is announced, so one segment re-check per contact (with
    # its last new event) sees them all; the others skip it. If that announcement is left to the
    # relay, the relay re-checks.
    for positions in by_contact.values():
        new = [n for n in positions if n in fresh]
        for n in new[:-1]:
            fresh[n] = replace(fresh[n], watched=False)
    await gather_limited(_ANNOUNCE_CONCURRENCY, announce, by_contact.values())
    assert all(outcome is not None for outcome in outcomes)
    return outcomes  # type: ignore[return-value]


async def _store_custom_events(
    sessions: SessionFactory,
    incoming: Sequence[IncomingEvent],
    events: Mapping[int, Event],
    changes: Mapping[int, dict[str, Any]],
    source: str,
) -> dict[int, Any]:
    """`_CUSTOM_EVENTS` for the events to store: its row for each position whose contact
    was found. A request's single event shares its statement with the single events other
    requests of this process store at the same time (`nurture.db.together`)."""
    if not events:
        return {}
    positions = list(events)
    many = [
        _Storing(incoming[n].contact, events[n], json.dumps(changes[n]), source[:160])
        for n in positions
    ]
    if len(many) == 1:
        (one,) = await ask_together(sessions, _store_together, many)
        return {} if one is None else {positions[0]: one}
    async with driver_connection(sessions) as connection:
        found = await _store_many(connection, many)
    return {positions[row["n"]]: row for row in found}


@dataclass(frozen=True, eq=False)  # each caller's own: never merged with an equal one
class _Storing:
    """One event to store, with its contact (id or external id) and its change as JSON."""

    contact: uuid.UUID | str
    event: Event
    changes: str
    source: str


async def _store_together(sessions: SessionFactory, waiting: list[_Storing]) -> dict[_Storing, Any]:
    """The single events of concurrent requests, in one statement per source (there is one
    source in practice: the API); a lone event on its own statement, which costs Postgres
    less than the arrays of one element."""
    found: dict[_Storing, Any] = {}
    by_source: dict[str, list[_Storing]] = {}
    for one in waiting:
        by_source.setdefault(one.source, []).append(one)
    async with driver_connection(sessions) as connection:
        for source, group in by_source.items():
            if len(group) == 1:
                (one,) = group
                event = one.event
                row = await connection.fetchrow(
                    _ONE_BY_EXTERNAL_ID if isinstance(one.contact, str) else _ONE_BY_ID,
                    one.contact,
                    event.id,
                    event.dedupe_key,
                    event.name,
                    json.dumps(event.properties),
                    event.occurred_at,
                    one.changes,
                    source,
                    LEASE,
                )
                if row is not None:  # the statement numbers its one event 0
                    found[one] = row
                continue
            for row in await _store_many(connection, group):
                found[group[row["n"]]] = row
    return found


async def _store_many(connection: Any, many: Sequence[_Storing]) -> list[Any]:
    """`_MANY` for these events, all of one source, numbered by their place in `many`, in the
    order given (of two with one dedupe key, the first is stored)."""
    return list(
        await connection.fetch(
            _MANY,
            list(range(len(many))),
            [m.contact if isinstance(m.contact, uuid.UUID) else None for m in many],
            [m.contact if isinstance(m.contact, str) else None for m in many],
            [m.event.id for m in many],
            [m.event.dedupe_key for m in many],
            [m.event.name for m in many],
            [json.dumps(m.event.properties) for m in many],
            [m.event.occurred_at for m in many],
            [m.changes for m in many],
            many[0].source,
            LEASE,
        )
    )


async def _record_scored_event(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    event: Event,
    source: str,
) -> RecordedEvent:
    """A custom event while lead scoring counts events: stored with its change through
    `record` (which adds the score the event moves), then announced."""
    assert event.contact_id is not None and event.name is not None
    stored, duplicate, change_id = await _store(
        sessions,
        event.model_dump(),
        Change(
            event.contact_id,
            source,
            {"event": {"name": event.name, "properties": event.properties}},
            reload=False,
        ),
    )
    announcer = Announcer(sessions, client, options)
    announced = await announcer.announce_now([change_id] if change_id is not None else [])
    return RecordedEvent(
        stored, duplicate, announced.signalled, [e.id for e in announced.enrollments]
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
    score_change: int | None = None  # the change lead scoring recorded for it, to announce


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
    event, duplicate, score_change = await _store(
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
    return StoredEngagement(event, message, duplicate, score_change)


async def deliver_engagement(
    sessions: SessionFactory,
    client: Client,
    stored: StoredEngagement,
    options: EnrollmentOptions | None = None,
) -> RecordedEvent:
    """The second half of `record_engagement`: signal the enrollment (Temporal away: left for
    `redeliver_engagement`), then let the contact's change start journeys."""
    event, message, duplicate = stored.event, stored.message, stored.duplicate
    if stored.score_change is not None and options is not None:
        # Left to the relay if this fails: the change is recorded.
        await Announcer(sessions, client, options).announce_now([stored.score_change])
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


async def signal_engagements(
    sessions: SessionFactory,
    client: Client,
    event_ids: Sequence[uuid.UUID],
    concurrency: int = 32,
) -> int:
    """Signal stored opens and clicks to the enrollments that sent their messages, at most
    `concurrency` signals in flight, then mark them delivered; how many were delivered
    (signalled, or with no running enrollment left to tell). One read for all of them and one
    write after.

    An event whose workflow refuses the signal for a reason of its own, or that cannot reach
    Temporal, stays due (`signalled_at` NULL) for the next redelivery round; the others are not
    held up by it. Enrollments ignore an event id they have seen, so delivering twice is
    harmless."""
    if not event_ids:
        return 0
    async with autocommit(sessions)() as session:
        rows = (
            await session.execute(
                sa.select(
                    Event,
                    col(Message.step_id),
                    col(Message.idempotency_key),
                    col(Enrollment.workflow_id),
                    col(Enrollment.status),
                )
                .join(Message, col(Message.id) == col(Event.message_id))
                .outerjoin(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
                .where(col(Event.id).in_(list(event_ids)), col(Event.signalled_at).is_(None))
            )
        ).all()

    async def one(row: Any) -> bool:
        event, step_id, message_key, workflow_id, status = row
        if workflow_id is None or status not in ACTIVE_ENROLLMENT_STATUSES:
            return False  # nothing left to tell: delivered
        # The message key is {enrollment}:{step}:{visit}: which send of the step this was.
        signal = EnrollmentEvent(
            event_id=event.dedupe_key,
            kind="click" if event.kind == "click" else "open",
            step=step_id,
            visit=int(message_key.rsplit(":", 1)[1]),
            link=event.link,
            occurred_at=event.occurred_at,
        )
        async with asyncio.timeout(_SIGNAL_TIME_LIMIT):
            return await signal_workflow(client, workflow_id, "event", signal)

    outcomes = await gather_limited_outcomes(concurrency, one, rows)
    delivered = [
        row[0].id
        for row, o in zip(rows, outcomes, strict=True)
        if o is not None and not isinstance(o, BaseException)
    ]
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            logger.warning("event %s kept for redelivery: %s", row[0].id, outcome)
    if delivered:
        async with autocommit(sessions)() as session:
            await session.execute(
                update(Event).where(col(Event.id).in_(delivered)).values(signalled_at=utcnow())
            )
    return len(delivered)


async def redeliver_engagement(sessions: SessionFactory, client: Client, limit: int = 500) -> int:
    """Signal the opens and clicks stored but not delivered (Temporal was unreachable, the
    process that stored them died before signalling, a webhook batch answered before its
    signals); how many went out.

    Enrollments ignore an event id they have already seen, so delivering twice is harmless."""
    async with sessions() as session:
        due = list(
            await session.scalars(
                select(col(Event.id))
                .where(
                    col(Event.signalled_at).is_(None),
                    col(Event.machine).is_(False),
                    col(Event.kind).in_(("open", "click")),
                )
                .order_by(col(Event.received_at))
                .limit(limit)
            )
        )
    return await signal_engagements(sessions, client, due)


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
