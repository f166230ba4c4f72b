"""The development channel: "delivers" by writing to the outbox_messages table, once per key."""

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col

from nurture.channels.base import DeliveryReceipt, OutgoingMessage
from nurture.db.engine import SessionFactory
from nurture.db.models import OutboxMessage


class OutboxChannel:
    provider = "outbox"
    dedupes_on_key = True  # one row per idempotency key: a second send finds the first

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        async with self._sessions.begin() as session:
            await session.execute(
                insert(OutboxMessage)
                .values(
                    idempotency_key=message.idempotency_key,
                    channel=message.channel,
                    to_address=message.to_address,
                    template=message.template,
                    payload={
                        "message_id": str(message.message_id),
                        "subject": message.subject,
                        "html": message.html,
                        "text": message.text,
                        "headers": message.headers,
                        "variables": message.variables,
                    },
                )
                .on_conflict_do_nothing(index_elements=["idempotency_key"])
            )
            outbox_id = await session.scalar(
                select(col(OutboxMessage.id)).where(
                    col(OutboxMessage.idempotency_key) == message.idempotency_key
                )
            )
        return DeliveryReceipt(provider=self.provider, provider_message_id=str(outbox_id))
