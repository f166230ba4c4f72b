"""The interface every channel (outbox, SMTP, SendGrid, Twilio...) implements."""

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    idempotency_key: str  # pass to the provider where it dedupes: a retry must not send twice
    message_id: uuid.UUID
    channel: str
    to_address: str
    template: str
    variables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryReceipt:
    provider: str
    provider_message_id: str


class PermanentSendError(Exception):
    """The provider refused the message for good (invalid address, rejected): do not retry."""


class ChannelSender(Protocol):
    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """Hand the message to the provider; raise PermanentSendError or any retryable error."""
        ...
