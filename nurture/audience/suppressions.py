"""Suppressions: contacts that must not get messages on a channel (unsubscribed, bounced,
complained). A suppressed send is skipped with the reason and never reaches a provider."""

from __future__ import annotations

import uuid

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.audience.changes import Change, record
from nurture.db.models import Suppression, SuppressionReason


async def suppress(
    session: AsyncSession,
    contact_id: uuid.UUID,
    channel: str,
    reason: SuppressionReason,
    source: str,
    message_id: uuid.UUID | None = None,
) -> bool:
    """Suppress the contact on the channel (in the caller's transaction); True if it was not
    suppressed before. The first reason recorded stays: a bounce after an unsubscribe changes
    nothing. A new suppression is a change of the contact (`nurture.audience.changes`),
    announced by the worker's relay: segments that look at suppressions re-check it; sends
    check suppressions themselves, so enrollments need not reload."""
    inserted = await session.scalar(
        insert(Suppression)
        .values(
            id=uuid.uuid4(),
            contact_id=contact_id,
            channel=channel,
            reason=reason,
            source=source[:64],
            message_id=message_id,
        )
        .on_conflict_do_nothing(index_elements=["contact_id", "channel"])
        .returning(col(Suppression.id))
    )
    if inserted is None:
        return False
    await record(
        session,
        Change(
            contact_id,
            source,
            {"suppressed": {"channel": channel, "reason": str(reason)}},
            reload=False,
        ),
        announce_here=False,
    )
    return True


async def suppression_reason(
    session: AsyncSession, contact_id: uuid.UUID, channel: str
) -> str | None:
    """Why the contact is suppressed on the channel, or None."""
    reason: str | None = await session.scalar(
        select(Suppression.reason).where(
            col(Suppression.contact_id) == contact_id, col(Suppression.channel) == channel
        )
    )
    return reason
