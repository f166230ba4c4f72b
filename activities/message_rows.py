"""The message row of a send (email, SMS, push), claimed by its idempotency key.

A send claims its row in the transaction that decides it: the insert does nothing when an
earlier attempt made the row, and the row is then read locked (`FOR UPDATE`), so two attempts
of one send never decide it at once.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.db.models import Message, MessageStatus, utcnow


async def claimed_message(session: AsyncSession, key: str) -> Message | None:
    """The message row of this idempotency key, locked, if an attempt made it."""
    found: Message | None = (
        await session.scalars(
            select(Message).where(col(Message.idempotency_key) == key).with_for_update()
        )
    ).one_or_none()
    return found


async def claim_message(
    session: AsyncSession,
    *,
    key: str,
    enrollment_id: uuid.UUID | None,
    contact_id: uuid.UUID | None,
    step: str,
    channel: str,
    template: str,
) -> Message:
    """The message row of this idempotency key, made `sending` unless an attempt made it
    meanwhile; locked. `enrollment_id` and `contact_id`: None when those are gone."""
    await session.execute(
        insert(Message)
        .values(
            idempotency_key=key,
            enrollment_id=enrollment_id,
            contact_id=contact_id,
            step_id=step,
            channel=channel,
            template=template,
            status=MessageStatus.SENDING,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    message = await claimed_message(session, key)
    assert message is not None
    return message


async def finish_message(
    session: AsyncSession, key: str, status: MessageStatus, **values: object
) -> None:
    """The outcome of this idempotency key's send, with `sent_at` when it was sent."""
    await session.execute(
        update(Message)
        .where(col(Message.idempotency_key) == key)
        .values(status=status, sent_at=utcnow() if status == MessageStatus.SENT else None, **values)
    )
