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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client

from nurture.audience.events import record_engagement
from nurture.audience.suppressions import suppress
from nurture.db.engine import SessionFactory
from nurture.db.models import Message, SuppressionReason, WebhookEvent, utcnow
from nurture.journeys.enrollments import EnrollmentOptions
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


async def ingest(
    sessions: SessionFactory,
    client: Client,
    events: list[ProviderEvent],
    options: EnrollmentOptions | None = None,
) -> IngestResult:
    result = IngestResult()
    for event in events:
        if event.kind == "ignored":
            await _record_ignored(sessions, event)
            continue
        result.received += 1
        engagement: _Engagement | None = None
        async with sessions.begin() as session:
            row_id = await session.scalar(
                insert(WebhookEvent)
                .values(
                    id=uuid.uuid4(),
                    provider=event.provider,
                    dedupe_key=event.dedupe_key,
                    kind=event.kind,
                    # VARCHAR(255); real ids are far shorter, a longer one must not fail the batch
                    provider_message_id=(event.provider_message_id or "")[:255] or None,
                    payload=_payload(event),
                    occurred_at=event.occurred_at or utcnow(),
                    received_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(col(WebhookEvent.id))
            )
            # Locked, so a concurrent redelivery waits for this one instead of racing it.
            row = await session.scalar(
                select(WebhookEvent)
                .where(col(WebhookEvent.dedupe_key) == event.dedupe_key)
                .with_for_update()
            )
            assert row is not None
            if row_id is None:
                result.duplicates += 1
            if row.processed_at is not None:
                continue
            engagement = await _process(session, row, result)
            if row.message_id is None and row_id is not None:
                result.unmatched += 1
        if engagement is not None:
            await _engage(sessions, client, engagement, result, options)
    return result


async def _record_ignored(sessions: SessionFactory, event: ProviderEvent) -> None:
    """Take the dedupe key of a delivery we do not act on: stored as done, never matched, not
    counted in the receipt. A replay of the key with other data is then a duplicate."""
    async with sessions.begin() as session:
        now = utcnow()
        await session.execute(
            insert(WebhookEvent)
            .values(
                id=uuid.uuid4(),
                provider=event.provider,
                dedupe_key=event.dedupe_key,
                kind=event.kind,
                provider_message_id=None,
                payload=_payload(event),
                occurred_at=event.occurred_at or now,
                received_at=now,
                processed_at=now,
            )
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
        )


async def match_pending(
    sessions: SessionFactory,
    client: Client,
    provider: str,
    provider_message_id: str,
    options: EnrollmentOptions | None = None,
) -> int:
    """Act on stored events that arrived before we knew which message they were about;
    call once the message row has its provider id. Returns how many were matched."""
    engagements: list[_Engagement] = []
    result = IngestResult()
    async with sessions.begin() as session:
        rows = (
            await session.scalars(
                select(WebhookEvent)
                .where(
                    col(WebhookEvent.provider) == provider,
                    col(WebhookEvent.provider_message_id) == provider_message_id,
                    col(WebhookEvent.message_id).is_(None),
                    col(WebhookEvent.processed_at).is_(None),
                )
                .order_by(col(WebhookEvent.occurred_at))
                # Another caller (or a redelivery) may be on the same rows: leave them to it.
                .with_for_update(skip_locked=True)
            )
        ).all()
        matched = 0
        for row in rows:
            engagement = await _process(session, row, result)
            if row.message_id is not None:
                matched += 1
            if engagement is not None:
                engagements.append(engagement)
    for engagement in engagements:
        await _engage(sessions, client, engagement, result, options)
    return matched


def _payload(event: ProviderEvent) -> dict[str, Any]:
    return {
        "raw": event.raw,
        "permanent": event.permanent,
        "url": event.url,
        "machine": event.machine,
        "nurture_message_id": str(event.message_id) if event.message_id else None,
    }


async def _find_message(session: AsyncSession, row: WebhookEvent) -> Message | None:
    ours = row.payload.get("nurture_message_id")
    if ours:
        message = await session.get(Message, uuid.UUID(ours))
        if message is not None:
            return message
    if row.provider_message_id is None:
        return None
    # Mailgun's send API answers "<id>" while its events say "id": accept either form.
    ids = [row.provider_message_id, f"<{row.provider_message_id}>"]
    message = await session.scalar(
        select(Message)
        .where(
            col(Message.provider) == row.provider,
            or_(*(col(Message.provider_message_id) == i for i in ids)),
        )
        .limit(1)
    )
    return message


async def _process(
    session: AsyncSession, row: WebhookEvent, result: IngestResult
) -> _Engagement | None:
    """Match the row and apply what belongs in this transaction; returns the engagement to
    record after the commit, if any. Leaves an unmatched row untouched."""
    message = await _find_message(session, row) if row.message_id is None else None
    if row.message_id is None:
        if message is None:
            return None
        row.message_id = message.id
    else:
        message = await session.get(Message, row.message_id)
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
    )


async def _engage(
    sessions: SessionFactory,
    client: Client,
    engagement: _Engagement,
    result: IngestResult,
    options: EnrollmentOptions | None,
) -> None:
    # Never fails for Temporal being away: the open/click is then stored for our own
    # redelivery (nurture.audience.events.redeliver_engagement), so the webhook's work is done.
    await record_engagement(
        sessions,
        client,
        engagement.message_id,
        "open" if engagement.kind == "open" else "click",
        link=engagement.url,
        idempotency_key=engagement.dedupe_key,
        occurred_at=engagement.occurred_at,
        machine=engagement.machine,
        options=options,
    )
    result.engagements += 1
    async with sessions.begin() as session:
        await session.execute(
            update(WebhookEvent)
            .where(
                col(WebhookEvent.id) == engagement.row_id,
                col(WebhookEvent.processed_at).is_(None),
            )
            .values(processed_at=utcnow())
        )
