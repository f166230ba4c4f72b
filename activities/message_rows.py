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

from activities.path_rows import CURRENT_STEP, PATH_CTES
from nurture.db.models import Message, MessageStatus, utcnow
from nurture.db.rows import contact_columns


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


# The send activity's lean path (activities.messaging): the path up to the send written, and
# all a new send is decided on read, in one statement. $1-$13 the progress
# (`activities.path_rows.progress_arguments`); $14 the idempotency key, $15 the contact,
# $16 the channel, $17 the template key. One row, whatever is missing (NULL contact columns:
# the contact is gone; NULL template_id: no such template).
SEND_FACTS = (
    PATH_CTES
    + f""", progressed AS ({CURRENT_STEP})
SELECT {contact_columns("c")},
    EXISTS (SELECT 1 FROM live) AS enrollment_exists,
    EXISTS (SELECT 1 FROM messages WHERE idempotency_key = $14) AS message_exists,
    (SELECT reason FROM suppressions WHERE contact_id = $15 AND channel = $16) AS suppressed,
    (SELECT rules FROM send_rules WHERE id = 1) AS send_rules,
    t.id AS template_id, t.version AS template_version,
    t.subject AS template_subject, t.html AS template_html, t.text AS template_text
FROM (SELECT 1) AS one
LEFT JOIN contacts c ON c.id = $15
LEFT JOIN templates t ON t.channel = $16 AND t.key = $17
"""
)

# A new message row with its decision, and the send's claim on the frequency caps when it
# goes ($12: the claim's instant; NULL: no claim). Returns nothing when an attempt made the row
# meanwhile: the caller then takes the locking path, which reads it.
NEW_MESSAGE = """
WITH claim AS (
    INSERT INTO send_claims (idempotency_key, contact_id, channel, at, transactional)
    SELECT $2, $4, $6, $12, $13 WHERE $12::timestamptz IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING
)
INSERT INTO messages (id, idempotency_key, enrollment_id, contact_id, step_id, channel,
    template, template_version, status, reason, attempted_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $14)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

# A sent message's outcome, and whether webhooks about it arrived before it was recorded
# (almost never: `nurture.webhooks.ingest.match_pending` takes them then).
SENT = f"""
WITH done AS (
    UPDATE messages SET status = '{MessageStatus.SENT.value}', sent_at = $2, provider = $3,
        provider_message_id = $4
    WHERE idempotency_key = $1
)
SELECT $4::text IS NOT NULL AND EXISTS (
    SELECT 1 FROM webhook_events
    WHERE provider = $3 AND provider_message_id = $4 AND message_id IS NULL
        AND processed_at IS NULL
)
"""
