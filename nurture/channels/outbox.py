"""The development channel: "delivers" by writing to the outbox_messages table, once per key."""

import json
import uuid

from nurture.channels.base import DeliveryReceipt, OutgoingMessage
from nurture.db.engine import SessionFactory
from nurture.db.lean import driver_connection
from nurture.db.models import utcnow

# One round trip (on the driver connection, `nurture.db.lean`): the row inserted once per key,
# and its id either way. A row an earlier attempt made is read by the same statement; one a
# concurrent attempt is inserting is not visible to this statement's snapshot (ON CONFLICT
# waited for it to commit), so its id is then read by a second statement.
_DELIVER = """
WITH new AS (
  INSERT INTO outbox_messages (id, idempotency_key, channel, to_address, template, payload,
                               created_at)
  VALUES ($1::uuid, $2::text, $3::text, $4::text, $5::text, $6::jsonb, $7::timestamptz)
  ON CONFLICT (idempotency_key) DO NOTHING
  RETURNING id)
SELECT id FROM new
UNION ALL
SELECT id FROM outbox_messages WHERE idempotency_key = $2::text
LIMIT 1
"""
_DELIVERED = "SELECT id FROM outbox_messages WHERE idempotency_key = $1::text"


class OutboxChannel:
    provider = "outbox"
    dedupes_on_key = True  # one row per idempotency key: a second send finds the first

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        payload = {
            "message_id": str(message.message_id),
            "subject": message.subject,
            "html": message.html,
            "text": message.text,
            "headers": message.headers,
            "variables": message.variables,
        }
        async with driver_connection(self._sessions) as connection:
            outbox_id = await connection.fetchval(
                _DELIVER,
                uuid.uuid4(),
                message.idempotency_key,
                message.channel,
                message.to_address,
                message.template,
                json.dumps(payload),
                utcnow(),
            )
            if outbox_id is None:
                outbox_id = await connection.fetchval(_DELIVERED, message.idempotency_key)
        return DeliveryReceipt(provider=self.provider, provider_message_id=str(outbox_id))
