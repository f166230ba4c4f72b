"""Storing verified provider events, then acting on them.

Each event is stored once (webhook_events.dedupe_key is UNIQUE; a redelivery is a duplicate)
and, in the same transaction, matched to its message and acted on: a hard bounce, complaint
or unsubscribe suppresses the contact on the message's channel. So a stored, matched event
has always had its suppression applied. Opens and clicks go through `record_engagement`,
which has its own transactions and signals Temporal (or keeps the event for redelivery when
Temporal is away): they are done after the commit, keyed by the dedupe key (counted once
however often they arrive), and `processed_at` is set only once they are recorded. A redelivery of an event whose work is unfinished (engagement not recorded,
or message not known at the time) finishes it; it never does anything twice.

An event whose message is not known yet is kept with message_id NULL; `match_pending` acts
on it once the message row has the provider's id.

`payload` holds {"raw": <the provider's event>, "permanent", "url", "machine",
"nurture_message_id"}: what is needed to act on the event later without the provider parser.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, or_, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client

from nurture.audience.events import signal_engagements
from nurture.audience.segments.membership import entering_journeys
from nurture.audience.suppressions import suppress
from nurture.concurrency import gather_limited
from nurture.db.engine import SessionFactory
from nurture.db.lean import autocommit
from nurture.db.models import Event, Message, SuppressionReason, WebhookEvent, utcnow
from nurture.journeys.enrollments import TEMPORAL_UNREACHABLE, EnrollmentOptions
from nurture.journeys.triggers import on_contact_changed
from nurture.webhooks.base import ProviderEvent

logger = logging.getLogger("nurture.webhooks")

_SUPPRESSING = {
    "complained": SuppressionReason.COMPLAINED,
    "unsubscribed": SuppressionReason.UNSUBSCRIBED,
}
_ENGAGEMENTS = {"opened": "open", "clicked": "click"}
# events.link is VARCHAR(128) (it holds named links); a longer URL stays in the payload only.
_MAX_LINK = 128


@dataclass
class IngestResult:
    received: int = 0  # events recognised in the request
    duplicates: int = 0  # already stored before
    unmatched: int = 0  # stored, but no message of ours is known for them yet
    suppressed: int = 0  # contacts newly suppressed
    engagements: int = 0  # opens and clicks recorded


@dataclass(frozen=True)
class _Engagement:
    row_id: uuid.UUID
    message_id: uuid.UUID
    kind: str
    dedupe_key: str
    url: str | None
    occurred_at: Any
    machine: bool = False  # e.g. SendGrid's sg_machine_open (Apple Mail Privacy Protection)
    contact_id: uuid.UUID | None = None


async def ingest(
    sessions: SessionFactory,
    client: Client,
    events: list[ProviderEvent],
    options: EnrollmentOptions | None = None,
) -> IngestResult:
    """Store and act on a request's events, then signal its opens and clicks (`store` then
    `deliver`). A webhook route answers between the two (`store` alone) and delivers after
    answering; this is both, for callers with nothing to answer."""
    stored = await store(sessions, events)
    await deliver(sessions, client, stored, options)
    return stored.result


@dataclass
class Stored:
    """What `store` committed: the receipt, and the opens and clicks to signal."""

    result: IngestResult
    engagements: list[uuid.UUID]  # ids of the `events` rows stored for them, signalled_at NULL
    contacts: list[uuid.UUID]  # contacts with a new open or click (segments to re-check)


async def store(sessions: SessionFactory, events: list[ProviderEvent]) -> Stored:
    """Store a request's events in one transaction: each once (one INSERT ... ON CONFLICT DO
    NOTHING for the batch; a redelivery is a duplicate), matched to its message, acted on
    (suppressions), and its opens and clicks written to `events` with `signalled_at` NULL.

    Once this has committed, the request is answered: the stored rows are the durable record.
    Signalling the opens and clicks (`deliver`) comes after; if it never happens (the process
    died, Temporal is away) the worker's redelivery of unsignalled events does it.

    Rows are inserted and locked in dedupe-key order, so two deliveries of overlapping batches
    wait for each other instead of deadlocking; a redelivery waits for the first delivery's
    transaction and then finds its rows processed."""
    result = IngestResult()
    wanted: dict[str, ProviderEvent] = {}
    ignored: dict[str, ProviderEvent] = {}
    for event in events:
        if event.kind == "ignored":
            ignored.setdefault(event.dedupe_key, event)
            continue
        result.received += 1
        if event.dedupe_key in wanted:
            result.duplicates += 1  # twice in the same request
        wanted.setdefault(event.dedupe_key, event)
    stored = Stored(result, [], [])
    async with sessions.begin() as session:
        if ignored:
            await _store_ignored(session, sorted(ignored.values(), key=_by_key))
        if not wanted:
            return stored
        now = utcnow()
        inserted = set(
            await session.scalars(
                insert(WebhookEvent)
                .values([_row(event, now) for event in sorted(wanted.values(), key=_by_key)])
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(col(WebhookEvent.dedupe_key))
            )
        )
        result.duplicates += len(wanted) - len(inserted)
        # The rows still to act on: the new ones, and a redelivered one whose work was not
        # finished (its message unknown until now). Locked until the commit.
        rows = list(
            await session.scalars(
                select(WebhookEvent)
                .where(
                    col(WebhookEvent.dedupe_key).in_(list(wanted)),
                    col(WebhookEvent.processed_at).is_(None),
                )
                .order_by(col(WebhookEvent.dedupe_key))
                .with_for_update()
            )
        )
        engagements = await _process_rows(session, rows, result)
        for row in rows:
            if row.message_id is None and row.dedupe_key in inserted:
                result.unmatched += 1
        stored.engagements = await _store_engagements(session, engagements)
        stored.contacts = sorted(
            {e.contact_id for e in engagements if e.contact_id is not None and not e.machine}
        )
        result.engagements = len(engagements)
    return stored


# Signals in flight at once while delivering a batch: enough to keep the server busy, few enough
# that 1,000 clicks do not open 1,000 RPCs at once.
DELIVER_CONCURRENCY = 32


async def deliver(
    sessions: SessionFactory,
    client: Client,
    stored: Stored,
    options: EnrollmentOptions | None = None,
) -> int:
    """Signal the opens and clicks `store` wrote (bounded concurrency), then re-check the
    segments their contacts may have entered; how many were signalled. Never raises for
    Temporal being away: what is not signalled is left to redelivery."""
    signalled = 0
    try:
        signalled = await signal_engagements(
            sessions, client, stored.engagements, DELIVER_CONCURRENCY
        )
    except TEMPORAL_UNREACHABLE as err:
        logger.warning("webhook events left for redelivery: Temporal unavailable (%s)", err)
        return signalled
    if options is not None and stored.contacts:
        async with sessions() as session:
            watched = await entering_journeys(session)
        if watched:

            async def recheck(contact_id: uuid.UUID) -> None:
                try:
                    await on_contact_changed(sessions, client, options, contact_id)
                except TEMPORAL_UNREACHABLE as err:  # the sweep admits the entry later
                    logger.warning("segment re-check of %s left to the sweep: %s", contact_id, err)

            await gather_limited(DELIVER_CONCURRENCY, recheck, stored.contacts)
    return signalled


def _by_key(event: ProviderEvent) -> str:
    return event.dedupe_key


def _row(event: ProviderEvent, now: Any, processed: bool = False) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "provider": event.provider,
        "dedupe_key": event.dedupe_key,
        "kind": event.kind,
        # VARCHAR(255); real ids are far shorter, a longer one must not fail the batch
        "provider_message_id": (event.provider_message_id or "")[:255] or None,
        "payload": _payload(event),
        "occurred_at": event.occurred_at or now,
        "received_at": now,
        "processed_at": now if processed else None,
    }


async def _store_ignored(session: AsyncSession, events: list[ProviderEvent]) -> None:
    """Take the dedupe keys of deliveries we do not act on: stored as done, never matched, not
    counted in the receipt. A replay of a key with other data is then a duplicate."""
    now = utcnow()
    await session.execute(
        insert(WebhookEvent)
        .values([_row(event, now, processed=True) for event in events])
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )


async def _process_rows(
    session: AsyncSession, rows: list[WebhookEvent], result: IngestResult
) -> list[_Engagement]:
    """`_process` for many rows, their messages found in one query."""
    messages = await _find_messages(session, rows)
    engagements = []
    for row in rows:
        engagement = await _process(session, row, result, messages)
        if engagement is not None:
            row.processed_at = utcnow()  # its `events` row is written in this transaction
            engagements.append(engagement)
    return engagements


async def _store_engagements(
    session: AsyncSession, engagements: list[_Engagement]
) -> list[uuid.UUID]:
    """The opens and clicks as `events` rows (keyed by the webhook event's dedupe key, so a
    retry stores nothing twice), unsignalled; the ids of those to signal (not machine opens)."""
    if not engagements:
        return []
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "id": uuid.uuid4(),
            "dedupe_key": e.dedupe_key,
            "contact_id": e.contact_id,
            "kind": e.kind,
            "message_id": e.message_id,
            "link": e.url,
            "properties": {},
            "machine": e.machine,
            "occurred_at": e.occurred_at or now,
            "received_at": now,
        }
        for e in sorted(engagements, key=lambda e: e.dedupe_key)
    ]
    await session.execute(
        insert(Event).values(rows).on_conflict_do_nothing(index_elements=["dedupe_key"])
    )
    # A retry after a crash between the two may find the event stored before: signal that one.
    ids = await session.scalars(
        select(col(Event.id)).where(
            col(Event.dedupe_key).in_([e.dedupe_key for e in engagements]),
            col(Event.machine).is_(False),
            col(Event.signalled_at).is_(None),
        )
    )
    return list(ids)


async def match_pending(
    sessions: SessionFactory,
    client: Client,
    provider: str,
    provider_message_id: str,
    options: EnrollmentOptions | None = None,
) -> int:
    """Act on stored events that arrived before we knew which message they were about;
    call once the message row has its provider id. Returns how many were matched."""
    unmatched = (
        col(WebhookEvent.provider) == provider,
        col(WebhookEvent.provider_message_id) == provider_message_id,
        col(WebhookEvent.message_id).is_(None),
        col(WebhookEvent.processed_at).is_(None),
    )
    # Called after every send, and almost always there is nothing: one plain read says so
    # (one round trip), before the locking transaction (three) that takes the rows.
    async with autocommit(sessions)() as session:
        if not await session.scalar(select(exists().where(*unmatched))):
            return 0
    result = IngestResult()
    stored = Stored(result, [], [])
    async with sessions.begin() as session:
        rows = (
            await session.scalars(
                select(WebhookEvent)
                .where(*unmatched)
                .order_by(col(WebhookEvent.occurred_at))
                # Another caller (or a redelivery) may be on the same rows: leave them to it.
                .with_for_update(skip_locked=True)
            )
        ).all()
        engagements = await _process_rows(session, list(rows), result)
        matched = sum(1 for row in rows if row.message_id is not None)
        stored.engagements = await _store_engagements(session, engagements)
        stored.contacts = sorted(
            {e.contact_id for e in engagements if e.contact_id is not None and not e.machine}
        )
    await deliver(sessions, client, stored, options)
    return matched


def _payload(event: ProviderEvent) -> dict[str, Any]:
    return {
        "raw": event.raw,
        "permanent": event.permanent,
        "url": event.url,
        "machine": event.machine,
        "nurture_message_id": str(event.message_id) if event.message_id else None,
    }


async def _find_messages(session: AsyncSession, rows: list[WebhookEvent]) -> _Messages:
    """The messages these rows are about, in one query: by our own id when the provider echoed
    it, else by the provider's id (Mailgun's send API answers "<id>" while its events say "id":
    either form is accepted)."""
    ours = {
        uuid.UUID(str(row.payload["nurture_message_id"]))
        for row in rows
        if row.message_id is None and row.payload.get("nurture_message_id")
    }
    theirs: set[tuple[str, str]] = set()
    for row in rows:
        if row.message_id is None and row.provider_message_id is not None:
            theirs.add((row.provider, row.provider_message_id))
            theirs.add((row.provider, f"<{row.provider_message_id}>"))
    known = {row.message_id for row in rows if row.message_id is not None}
    conditions = []
    if ours or known:
        conditions.append(col(Message.id).in_(ours | known))
    if theirs:
        conditions.append(
            tuple_(col(Message.provider), col(Message.provider_message_id)).in_(list(theirs))
        )
    found = _Messages()
    if not conditions:
        return found
    for message in await session.scalars(select(Message).where(or_(*conditions))):
        found.by_id[message.id] = message
        if message.provider and message.provider_message_id:
            found.by_provider_id.setdefault(
                (message.provider, message.provider_message_id.strip("<>")), message
            )
    return found


@dataclass
class _Messages:
    by_id: dict[uuid.UUID, Message] = field(default_factory=dict)
    by_provider_id: dict[tuple[str, str], Message] = field(default_factory=dict)

    def of(self, row: WebhookEvent) -> Message | None:
        ours = row.payload.get("nurture_message_id")
        if ours:
            message = self.by_id.get(uuid.UUID(str(ours)))
            if message is not None:
                return message
        if row.provider_message_id is None:
            return None
        return self.by_provider_id.get((row.provider, row.provider_message_id.strip("<>")))


async def _process(
    session: AsyncSession, row: WebhookEvent, result: IngestResult, messages: _Messages
) -> _Engagement | None:
    """Match the row and apply what belongs in this transaction; returns the engagement to
    store, if any. Leaves an unmatched row untouched."""
    message = messages.of(row) if row.message_id is None else None
    if row.message_id is None:
        if message is None:
            return None
        row.message_id = message.id
    else:
        message = messages.by_id.get(row.message_id)
        if message is None:  # deleted since (the FK sets NULL); nothing left to act on
            row.processed_at = utcnow()
            return None
    reason = _SUPPRESSING.get(row.kind)
    if row.kind == "bounced" and row.payload.get("permanent"):
        reason = SuppressionReason.BOUNCED
    suppressed = (
        reason is not None
        and message.contact_id is not None
        and await suppress(
            session,
            message.contact_id,
            message.channel,
            reason,
            source=f"webhook:{row.provider}",
            message_id=message.id,
        )
    )
    if suppressed:
        result.suppressed += 1
        logger.info(
            "suppressed contact %s on %s: %s (webhook:%s)",
            message.contact_id,
            message.channel,
            reason,
            row.provider,
        )
    engagement_kind = _ENGAGEMENTS.get(row.kind)
    if engagement_kind is None:
        row.processed_at = utcnow()
        return None
    url = row.payload.get("url")
    return _Engagement(
        row_id=row.id,
        message_id=message.id,
        kind=engagement_kind,
        dedupe_key=row.dedupe_key,
        url=url if isinstance(url, str) and len(url) <= _MAX_LINK else None,
        occurred_at=row.occurred_at,
        machine=bool(row.payload.get("machine")),
        contact_id=message.contact_id,
    )
